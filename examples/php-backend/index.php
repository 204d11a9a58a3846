<?php
// Herald example backend: the business logic of a small IM service, in plain PHP.
//
//   php -S 127.0.0.1:9000 index.php
//
// Herald calls the /centrifugo/* endpoints (Centrifugo's proxy format, so this file also works
// behind Centrifugo) and POSTs signed events to /herald/webhook. See README.md.
//
// The "database" is the arrays below. Replace them with your session store and tables.

declare(strict_types=1);

// Session cookie value => user id (what your framework's session store would give you).
const SESSIONS = ['sess-alice' => 'alice', 'sess-bob' => 'bob'];
// Long-lived app tokens (mobile clients without cookies) => user id.
const APP_TOKENS = ['tok-bob' => 'bob', 'tok-carol' => 'carol'];
const USERS = [
    'alice' => ['name' => 'Alice', 'rooms' => ['1', '2']],
    'bob' => ['name' => 'Bob', 'rooms' => ['1']],
    'carol' => ['name' => 'Carol', 'rooms' => []],
];
const BANNED_WORDS = ['spam', 'casino'];
const RUDE_WORDS = ['darn', 'heck'];

function config(string $name, string $default): string
{
    $value = getenv($name);
    return $value === false || $value === '' ? $default : $value;
}

/** Sends a JSON answer and stops. */
function reply(array $body, int $status = 200): never
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
    exit;
}

/** The request's JSON body, or a 400 when it is not JSON. */
function request_json(string $raw): array
{
    $body = json_decode($raw, true);
    if (!is_array($body)) {
        reply(['error' => ['code' => 107, 'message' => 'bad request']], 400);
    }
    return $body;
}

/** Connect: who is this? A session cookie (browsers) or an app token sent in connect data. */
function on_connect(array $req): never
{
    $user = SESSIONS[$_COOKIE['session'] ?? ''] ?? null;
    if ($user === null) {
        $user = APP_TOKENS[$req['data']['token'] ?? ''] ?? null;
    }
    if ($user === null) {
        // 4501: a terminal code (4500-4999), the SDK does not reconnect. Send it to the login page.
        reply(['disconnect' => ['code' => 4501, 'reason' => 'login required']]);
    }
    reply(['result' => [
        'user' => $user,
        'info' => ['name' => USERS[$user]['name']],
        // Server-side subscriptions: every connection of a user follows the announcements.
        'channels' => ['im:announcements'],
        'data' => ['rooms' => USERS[$user]['rooms']],
        // Never shown to clients; comes back with every later hook call of this connection.
        'meta' => ['login' => time()],
        'expire_at' => time() + 3600,
    ]]);
}

/** Subscribe: room channels "im:room-<id>" are for members only. */
function on_subscribe(array $req): never
{
    $channel = (string)($req['channel'] ?? '');
    $user = (string)($req['user'] ?? '');
    if (preg_match('/^im:room-(\w+)$/', $channel, $m) === 1) {
        if (!in_array($m[1], USERS[$user]['rooms'] ?? [], true)) {
            reply(['error' => ['code' => 103, 'message' => 'permission denied']]);
        }
        reply(['result' => ['info' => ['member_since' => '2024-01-01']]]);
    }
    if ($channel === 'im:presence') {
        // (object)[] encodes as {}; a bare [] would be a JSON array (Herald accepts both, Centrifugo
        // does not).
        reply(['result' => (object)[]]);
    }
    reply(['error' => ['code' => 103, 'message' => 'permission denied']]);
}

/** Publish: refuse spam, clean up rude words and markup, stamp the message. */
function on_publish(array $req): never
{
    $text = (string)($req['data']['text'] ?? '');
    foreach (BANNED_WORDS as $word) {
        if (stripos($text, $word) !== false) {
            // Application error codes: use 400 and above so they never clash with Herald's own.
            reply(['error' => ['code' => 1000, 'message' => 'message refused by moderation']]);
        }
    }
    $clean = str_ireplace(RUDE_WORDS, '****', strip_tags($text));
    reply(['result' => ['data' => [
        'text' => $clean,
        'from' => $req['user'] ?? '',
        'moderated' => $clean !== $text,
    ]]]);
}

/** RPC: request/response over the WebSocket, answered by the backend. */
function on_rpc(array $req): never
{
    $user = (string)($req['user'] ?? '');
    switch ($req['method'] ?? '') {
        case 'whoami':
            reply(['result' => ['data' => [
                'user' => $user,
                'name' => USERS[$user]['name'] ?? '',
                'rooms' => USERS[$user]['rooms'] ?? [],
            ]]]);
        case 'room.members':
            $room = (string)($req['data']['room'] ?? '');
            $members = array_keys(array_filter(USERS, fn($u) => in_array($room, $u['rooms'], true)));
            reply(['result' => ['data' => ['room' => $room, 'members' => $members]]]);
        default:
            reply(['error' => ['code' => 1004, 'message' => 'unknown rpc method']]);
    }
}

/** Calls Herald's server API (docs/api.md). */
function herald_api(string $method, array $params): void
{
    $base = config('HERALD_API_URL', '');
    if ($base === '') {
        return;
    }
    $ch = curl_init(rtrim($base, '/') . '/api/' . $method);
    curl_setopt_array($ch, [
        CURLOPT_POST => true,
        CURLOPT_POSTFIELDS => json_encode($params),
        CURLOPT_HTTPHEADER => ['Content-Type: application/json', 'X-API-Key: ' . config('HERALD_API_KEY', '')],
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => 3,
    ]);
    curl_exec($ch);
    curl_close($ch);
}

/** Webhooks: verify the signature first, then react. */
function on_webhook(string $raw): never
{
    $secret = config('HERALD_WEBHOOK_SECRET', 'change-me');
    $expected = 'sha256=' . hash_hmac('sha256', $raw, $secret);
    $given = $_SERVER['HTTP_X_HERALD_SIGNATURE'] ?? '';
    if (!hash_equals($expected, $given)) {
        reply(['error' => 'bad signature'], 401);
    }
    $event = request_json($raw);
    // Refuse replays of old events (the time is inside the signed body).
    if (abs(time() * 1000 - (int)($event['time'] ?? 0)) > 5 * 60 * 1000) {
        reply(['error' => 'stale event'], 400);
    }
    $log = config('HERALD_EVENTS_LOG', sys_get_temp_dir() . '/herald-events.log');
    file_put_contents($log, $raw . "\n", FILE_APPEND | LOCK_EX);
    if (($event['event'] ?? '') === 'disconnect') {
        // Tell everyone watching presence that this user's connection went away.
        herald_api('publish', [
            'channel' => 'im:presence',
            'data' => ['user' => $event['user'] ?? '', 'online' => false],
        ]);
    }
    http_response_code(204);
    exit;
}

$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
if (($_SERVER['REQUEST_METHOD'] ?? 'GET') !== 'POST') {
    reply(['error' => 'POST only'], 405);
}
$raw = file_get_contents('php://input') ?: '';
match ($path) {
    '/centrifugo/connect' => on_connect(request_json($raw)),
    '/centrifugo/subscribe' => on_subscribe(request_json($raw)),
    '/centrifugo/publish' => on_publish(request_json($raw)),
    '/centrifugo/rpc' => on_rpc(request_json($raw)),
    '/herald/webhook' => on_webhook($raw),
    default => reply(['error' => 'not found'], 404),
};
