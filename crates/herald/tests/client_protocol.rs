//! The client protocol through a real WebSocket: connect, subscribe, publish, presence, history,
//! recovery, join/leave, server-side subscriptions, several commands per frame.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn connect_reply_carries_client_ping_and_personal_channel() {
    let server = TestServer::start().await;
    let mut client = Client::open(&server.ws_url()).await;
    let result = client.connect(&token("alice")).await;
    assert!(!result["client"].as_str().unwrap().is_empty());
    assert_eq!(result["ping"], 25);
    assert_eq!(result["pong"], true);
    assert!(
        result["expires"].as_bool().unwrap(),
        "token has exp: {result}"
    );
    assert!(result["ttl"].as_u64().unwrap() > 3500);
    assert!(
        result["subs"].get("#alice").is_some(),
        "personal channel subscribed: {result}"
    );
}

#[tokio::test]
async fn api_publication_reaches_subscriber_with_offset() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    let sub = client.subscribe("chat:room1").await;
    assert_eq!(sub["recoverable"], true);
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let result = server
        .api_ok(
            "publish",
            json!({"channel": "chat:room1", "data": {"text": "hello"}}),
        )
        .await;
    assert_eq!(result["offset"], 1);
    assert_eq!(result["epoch"], epoch.as_str());
    let publication = client.publication("chat:room1").await;
    assert_eq!(publication["data"], json!({"text": "hello"}));
    assert_eq!(publication["offset"], 1);
}

#[tokio::test]
async fn client_publish_reaches_other_clients_with_publisher_info() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice.subscribe("chat:c").await;
    bob.subscribe("chat:c").await;
    let reply = alice
        .call("publish", json!({"channel": "chat:c", "data": {"n": 1}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let publication = bob.publication("chat:c").await;
    assert_eq!(publication["data"], json!({"n": 1}));
    assert_eq!(publication["info"]["user"], "alice");
    assert_eq!(publication["info"]["client"], alice.client_id.as_str());
}

#[tokio::test]
async fn several_commands_in_one_frame_get_their_replies() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    client
        .send_text(
            "{\"id\":10,\"subscribe\":{\"channel\":\"chat:a\"}}\n{\"id\":11,\"subscribe\":{\"channel\":\"chat:b\"}}\n{\"id\":12,\"ping\":{}}",
        )
        .await;
    assert!(client.reply(10).await.get("subscribe").is_some());
    assert!(client.reply(11).await.get("subscribe").is_some());
    assert!(client.reply(12).await.get("ping").is_some());
}

#[tokio::test]
async fn presence_join_and_leave() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:p").await;
    let mut bob = server.client("bob").await;
    bob.subscribe("chat:p").await;
    let join = loop {
        let push = alice.push().await;
        if push.get("join").is_some() && push["join"]["info"]["user"] == "bob" {
            break push;
        }
    };
    assert_eq!(join["channel"], "chat:p");
    let presence = alice.call("presence", json!({"channel": "chat:p"})).await;
    let clients = presence["presence"]["presence"].as_object().unwrap();
    assert_eq!(clients.len(), 2);
    assert!(clients.contains_key(&bob.client_id));
    let stats = alice
        .call("presence_stats", json!({"channel": "chat:p"}))
        .await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    bob.call("unsubscribe", json!({"channel": "chat:p"})).await;
    loop {
        let push = alice.push().await;
        if push.get("leave").is_some() {
            assert_eq!(push["leave"]["info"]["user"], "bob");
            break;
        }
    }
    let stats = server
        .api_ok("presence_stats", json!({"channel": "chat:p"}))
        .await;
    assert_eq!(stats, json!({"num_clients": 1, "num_users": 1}));
}

#[tokio::test]
async fn history_with_limit_since_and_reverse() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    client.subscribe("chat:h").await;
    for n in 1..=5 {
        server
            .api_ok("publish", json!({"channel": "chat:h", "data": {"n": n}}))
            .await;
    }
    let all = client
        .call("history", json!({"channel": "chat:h", "limit": -1}))
        .await;
    let pubs = all["history"]["publications"].as_array().unwrap();
    assert_eq!(
        pubs.iter()
            .map(|p| p["data"]["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all["history"]["offset"], 5);
    let epoch = all["history"]["epoch"].clone();
    let since = client
        .call(
            "history",
            json!({"channel": "chat:h", "limit": 10, "since": {"offset": 3, "epoch": epoch}}),
        )
        .await;
    let offsets: Vec<u64> = since["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![4, 5]);
    let reverse = client
        .call(
            "history",
            json!({"channel": "chat:h", "limit": 2, "reverse": true}),
        )
        .await;
    let offsets: Vec<u64> = reverse["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![5, 4]);
    let position_only = client.call("history", json!({"channel": "chat:h"})).await;
    assert!(
        position_only["history"].get("publications").is_none(),
        "{position_only}"
    );
    assert_eq!(position_only["history"]["offset"], 5);
    let bad = client
        .call(
            "history",
            json!({"channel": "chat:h", "limit": 1, "since": {"offset": 3, "epoch": "other"}}),
        )
        .await;
    assert_eq!(bad["error"]["code"], 112);
}

#[tokio::test]
async fn recovery_after_reconnect_delivers_missed_publications_in_order() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    let sub = client.subscribe("chat:r").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    server
        .api_ok("publish", json!({"channel": "chat:r", "data": {"n": 1}}))
        .await;
    let seen = client.publication("chat:r").await;
    let offset = seen["offset"].as_u64().unwrap();
    drop(client);
    for n in 2..=4 {
        server
            .api_ok("publish", json!({"channel": "chat:r", "data": {"n": n}}))
            .await;
    }
    let mut client = server.client("alice").await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "offset": offset, "epoch": epoch}),
        )
        .await;
    let sub = &reply["subscribe"];
    assert_eq!(sub["recovered"], true, "{reply}");
    assert_eq!(sub["was_recovering"], true);
    let recovered: Vec<i64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(recovered, vec![2, 3, 4]);
    assert_eq!(sub["offset"], 4);
    // Live publications continue after the recovered ones, without duplicates.
    server
        .api_ok("publish", json!({"channel": "chat:r", "data": {"n": 5}}))
        .await;
    assert_eq!(client.publication("chat:r").await["offset"], 5);
}

#[tokio::test]
async fn recovery_from_a_lost_epoch_reports_not_recovered() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "chat:lost", "recover": true, "offset": 7, "epoch": "gone"}),
        )
        .await;
    assert_eq!(reply["subscribe"]["was_recovering"], true, "{reply}");
    assert!(reply["subscribe"].get("recovered").is_none(), "{reply}");
    assert!(!reply["subscribe"]["epoch"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_publications_during_subscribe_are_neither_lost_nor_duplicated() {
    let server = TestServer::start().await;
    let node = server.node().clone();
    let publisher = tokio::spawn(async move {
        for n in 0..2000u32 {
            let data = serde_json::value::RawValue::from_string(n.to_string()).unwrap();
            node.publish("chat:race", data, None, Default::default(), "test")
                .await
                .unwrap();
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut client = server.client("alice").await;
    let sub = client.subscribe("chat:race").await;
    let mut last = sub["offset"].as_u64().unwrap_or(0);
    publisher.await.unwrap();
    while last < 2000 {
        let publication = client.publication("chat:race").await;
        let offset = publication["offset"].as_u64().unwrap();
        assert_eq!(offset, last + 1, "gap or duplicate after {last}");
        last = offset;
    }
}

#[tokio::test]
async fn personal_channel_and_server_side_subscribe_unsubscribe() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    server
        .api_ok("publish", json!({"channel": "#alice", "data": "hi alice"}))
        .await;
    assert_eq!(alice.publication("#alice").await["data"], "hi alice");

    server
        .api_ok(
            "subscribe",
            json!({"user": "alice", "channel": "chat:news"}),
        )
        .await;
    let push = alice.push().await;
    assert_eq!(push["channel"], "chat:news");
    assert!(push.get("subscribe").is_some(), "{push}");
    server
        .api_ok("publish", json!({"channel": "chat:news", "data": 1}))
        .await;
    assert_eq!(alice.publication("chat:news").await["data"], 1);
    server
        .api_ok(
            "unsubscribe",
            json!({"user": "alice", "channel": "chat:news"}),
        )
        .await;
    let push = loop {
        let push = alice.push().await;
        if push.get("unsubscribe").is_some() {
            break push;
        }
    };
    assert_eq!(push["unsubscribe"]["code"], 2000);
    server
        .api_ok("publish", json!({"channel": "chat:news", "data": 2}))
        .await;
    alice.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn token_channels_claim_subscribes_at_connect() {
    let server = TestServer::start().await;
    let mut client = Client::open(&server.ws_url()).await;
    let result = client
        .connect(&token_with(
            json!({"sub": "carol", "channels": ["chat:team"]}),
        ))
        .await;
    assert!(result["subs"].get("chat:team").is_some(), "{result}");
    assert_eq!(
        result["expires"],
        serde_json::Value::Null,
        "no exp, no expiry"
    );
    server
        .api_ok("publish", json!({"channel": "chat:team", "data": "x"}))
        .await;
    assert_eq!(client.publication("chat:team").await["data"], "x");
}

#[tokio::test]
async fn api_disconnect_closes_with_the_given_code() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    server
        .api_ok(
            "disconnect",
            json!({"user": "alice", "disconnect": {"code": 4501, "reason": "banned"}}),
        )
        .await;
    assert_eq!(alice.closed().await, Closed::Code(4501, "banned".into()));
    assert!(
        bob.call("ping", json!({})).await.get("ping").is_some(),
        "other users unaffected"
    );
}

#[tokio::test]
async fn rpc_is_not_available_and_unknown_methods_are_reported() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    let rpc = client.call("rpc", json!({"method": "x", "data": {}})).await;
    assert_eq!(rpc["error"]["code"], 108);
    let unknown = client.call("teleport", json!({})).await;
    assert_eq!(unknown["error"]["code"], 104);
    client.send(json!({"send": {"data": {"x": 1}}})).await;
    assert!(
        client.call("ping", json!({})).await.get("ping").is_some(),
        "send is accepted silently"
    );
}

#[tokio::test]
async fn refresh_extends_the_connection() {
    let server = TestServer::start().await;
    let mut client = Client::open(&server.ws_url()).await;
    let result = client
        .connect(&token_with(json!({"sub": "dave", "exp": now() + 60})))
        .await;
    assert!(result["ttl"].as_u64().unwrap() <= 60);
    let reply = client
        .call(
            "refresh",
            json!({"token": token_with(json!({"sub": "dave", "exp": now() + 7200}))}),
        )
        .await;
    assert!(reply["refresh"]["ttl"].as_u64().unwrap() > 7000, "{reply}");
    assert_eq!(reply["refresh"]["expires"], true);
}

#[tokio::test]
async fn a_refresh_reply_that_expires_always_says_when_to_refresh_again() {
    // A valid token (`exp` ahead) whose `expire_at` has already passed: the reply expires, and
    // the SDKs need a `ttl` with it (without one, centrifuge-js refreshes again at once, in a loop).
    let server = TestServer::start().await;
    let mut client = server.client("dave").await;
    let token = |claims| token_with(claims);
    let reply = client
        .call(
            "refresh",
            json!({"token": token(json!({"sub": "dave", "exp": now() + 60, "expire_at": now() - 5}))}),
        )
        .await;
    assert_eq!(reply["refresh"]["expires"], true, "{reply}");
    assert_eq!(reply["refresh"]["ttl"], 1, "{reply}");
    let sub_token = token(json!({"sub": "dave", "channel": "locked:past", "exp": now() + 60}));
    client
        .call(
            "subscribe",
            json!({"channel": "locked:past", "token": sub_token}),
        )
        .await;
    let past =
        json!({"sub": "dave", "channel": "locked:past", "exp": now() + 60, "expire_at": now() - 5});
    let reply = client
        .call(
            "sub_refresh",
            json!({"channel": "locked:past", "token": token(past)}),
        )
        .await;
    assert_eq!(reply["sub_refresh"]["expires"], true, "{reply}");
    assert_eq!(reply["sub_refresh"]["ttl"], 1, "{reply}");
}

/// A connection whose token expires 1 s after connecting, on a node giving `grace` after the
/// expiry (`client.expired_close_delay`); returned once the token has expired.
async fn connection_past_its_expiry(grace: Duration) -> (TestServer, Client) {
    let server = TestServer::with(|c| c.client.expired_close_delay = grace).await;
    let mut client = Client::open(&server.ws_url()).await;
    let exp = now() + 1;
    client
        .connect(&token_with(json!({"sub": "erin", "exp": exp})))
        .await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(now() > exp);
    (server, client)
}

#[tokio::test]
async fn connection_expires_without_refresh_after_the_grace() {
    // Past the token's expiry, within client.expired_close_delay: still open for a refresh.
    let (_server, mut client) = connection_past_its_expiry(Duration::from_secs(2)).await;
    assert!(
        client.call("ping", json!({})).await.get("ping").is_some(),
        "open during the grace"
    );
    let closed = client
        .closed_within(Duration::from_secs(4))
        .await
        .expect("closed");
    assert_eq!(closed, Closed::Code(3005, "connection expired".into()));
}

#[tokio::test]
async fn a_refresh_after_the_expiry_within_the_grace_keeps_the_connection() {
    // The SDK refreshes late: after the token expired (as a slow getToken does).
    let (_server, mut client) = connection_past_its_expiry(Duration::from_secs(3)).await;
    let reply = client
        .call(
            "refresh",
            json!({"token": token_with(json!({"sub": "erin", "exp": now() + 3600}))}),
        )
        .await;
    assert_eq!(reply["refresh"]["expires"], true, "{reply}");
    // Past the old expiry plus the grace: nothing closes the connection.
    assert_eq!(client.closed_within(Duration::from_secs(3)).await, None);
    assert!(client.call("ping", json!({})).await.get("ping").is_some());
}

#[tokio::test]
async fn subscription_token_grants_a_locked_channel() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    let denied = client
        .call("subscribe", json!({"channel": "locked:vip"}))
        .await;
    assert_eq!(denied["error"]["code"], 103);
    let sub_token =
        token_with(json!({"sub": "alice", "channel": "locked:vip", "exp": now() + 600}));
    let granted = client
        .call(
            "subscribe",
            json!({"channel": "locked:vip", "token": sub_token}),
        )
        .await;
    assert!(granted.get("subscribe").is_some(), "{granted}");
    assert_eq!(granted["subscribe"]["expires"], true);
    server
        .api_ok(
            "publish",
            json!({"channel": "locked:vip", "data": "secret"}),
        )
        .await;
    assert_eq!(client.publication("locked:vip").await["data"], "secret");
}

#[tokio::test]
async fn anonymous_connections_only_when_allowed() {
    let server = TestServer::with(|c| {
        c.client.allow_anonymous = true;
        c.channel.without_namespace.allow_subscribe_for_anonymous = true;
    })
    .await;
    let mut client = Client::open(&server.ws_url()).await;
    let reply = client.call("connect", json!({})).await;
    assert!(reply.get("connect").is_some(), "{reply}");
    assert!(
        reply["connect"].get("subs").is_none(),
        "no personal channel for anonymous"
    );
    client.subscribe("lobby").await;
    let denied = client.call("subscribe", json!({"channel": "chat:x"})).await;
    assert_eq!(
        denied["error"]["code"], 103,
        "chat does not allow anonymous"
    );
}

#[tokio::test]
async fn user_limited_and_personal_channels_admit_only_their_users() {
    let server =
        TestServer::with(|c| c.channel.namespaces[0].allow_user_limited_channels = true).await;
    let mut alice = server.client("alice").await;
    let mut eve = server.client("eve").await;
    let denied = eve.call("subscribe", json!({"channel": "#alice"})).await;
    assert_eq!(
        denied["error"]["code"], 103,
        "another user's personal channel: {denied}"
    );
    let denied = eve
        .call("subscribe", json!({"channel": "chat:dm#alice,bob"}))
        .await;
    assert_eq!(denied["error"]["code"], 103, "not on the list: {denied}");
    alice.subscribe("chat:dm#alice,bob").await;
    server
        .api_ok(
            "publish",
            json!({"channel": "chat:dm#alice,bob", "data": "psst"}),
        )
        .await;
    assert_eq!(alice.publication("chat:dm#alice,bob").await["data"], "psst");
}

#[tokio::test]
async fn private_channels_need_a_subscription_for_presence_and_history() {
    let server = TestServer::with(|c| {
        c.channel.namespaces[0].allow_presence_for_client = true;
        c.channel.namespaces[0].allow_history_for_client = true;
    })
    .await;
    let mut client = server.client("alice").await;
    let presence = client
        .call("presence", json!({"channel": "$chat:secret"}))
        .await;
    assert_eq!(presence["error"]["code"], 103, "{presence}");
    let history = client
        .call("history", json!({"channel": "$chat:secret"}))
        .await;
    assert_eq!(history["error"]["code"], 103, "{history}");
    let sub_token = token_with(json!({"sub": "alice", "channel": "$chat:secret"}));
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "$chat:secret", "token": sub_token}),
        )
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let presence = client
        .call("presence", json!({"channel": "$chat:secret"}))
        .await;
    assert!(presence.get("presence").is_some(), "{presence}");
}

#[tokio::test]
async fn anonymous_clients_need_the_anonymous_permission_too() {
    let server = TestServer::with(|c| {
        c.client.allow_anonymous = true;
        c.channel.without_namespace.allow_subscribe_for_anonymous = true;
        c.channel.without_namespace.allow_publish_for_client = true;
    })
    .await;
    let mut anon = Client::open(&server.ws_url()).await;
    assert!(anon
        .call("connect", json!({}))
        .await
        .get("connect")
        .is_some());
    anon.subscribe("lobby").await;
    let publish = anon
        .call("publish", json!({"channel": "lobby", "data": 1}))
        .await;
    assert_eq!(
        publish["error"]["code"], 103,
        "publish needs allow_publish_for_anonymous: {publish}"
    );
}

#[tokio::test]
async fn expired_subscription_is_unsubscribed_with_resubscribe_code() {
    let server =
        TestServer::with(|c| c.client.expired_sub_close_delay = Duration::from_secs(1)).await;
    let mut client = server.client("alice").await;
    let sub_token =
        token_with(json!({"sub": "alice", "channel": "locked:short", "exp": now() + 2}));
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "locked:short", "token": sub_token}),
        )
        .await;
    assert_eq!(reply["subscribe"]["expires"], true, "{reply}");
    let push = loop {
        let push = client
            .next_within(Duration::from_secs(6))
            .await
            .expect("unsubscribe push");
        if push["push"].get("unsubscribe").is_some() {
            break push;
        }
    };
    assert_eq!(push["push"]["channel"], "locked:short");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2501);
    assert!(
        client.call("ping", json!({})).await.get("ping").is_some(),
        "the connection stays open"
    );
}

#[tokio::test]
async fn replies_before_a_fatal_command_are_still_delivered() {
    let server = TestServer::start().await;
    let mut client = server.client("alice").await;
    client
        .send_text("{\"id\":5,\"ping\":{}}\n{\"id\":6,\"connect\":{}}")
        .await;
    assert!(client.reply(5).await.get("ping").is_some());
    assert_eq!(
        client.closed().await,
        Closed::Code(3501, "bad request".into())
    );
}

#[tokio::test]
async fn a_sub_refresh_after_the_expiry_within_the_grace_keeps_the_subscription() {
    let server =
        TestServer::with(|c| c.client.expired_sub_close_delay = Duration::from_secs(3)).await;
    let sub_token =
        |exp: i64| token_with(json!({"sub": "alice", "channel": "locked:late", "exp": exp}));
    let mut client = server.client("alice").await;
    let exp = now() + 1;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "locked:late", "token": sub_token(exp)}),
        )
        .await;
    assert_eq!(reply["subscribe"]["expires"], true, "{reply}");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(now() > exp);
    let refreshed = client
        .call(
            "sub_refresh",
            json!({"channel": "locked:late", "token": sub_token(now() + 3600)}),
        )
        .await;
    assert_eq!(refreshed["sub_refresh"]["expires"], true, "{refreshed}");
    // Past the old expiry plus the grace: no unsubscribe push, and publications still arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server
        .api_ok(
            "publish",
            json!({"channel": "locked:late", "data": {"n": 1}}),
        )
        .await;
    // Only this channel's pushes matter (the personal channel has its own join pushes).
    let push = loop {
        let push = client
            .next_within(Duration::from_secs(2))
            .await
            .expect("a push on locked:late");
        if push["push"]["channel"] == "locked:late" {
            break push;
        }
    };
    assert!(
        push["push"].get("pub").is_some(),
        "a publication, not an unsubscribe: {push}"
    );
}

#[tokio::test]
async fn sub_refresh_extends_then_rejects_bad_and_expired_tokens() {
    let server = TestServer::start().await;
    let sub_token =
        |exp: i64| token_with(json!({"sub": "alice", "channel": "locked:s", "exp": exp}));
    let mut client = server.client("alice").await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "locked:s", "token": sub_token(now() + 60)}),
        )
        .await;
    assert!(reply["subscribe"]["ttl"].as_u64().unwrap() <= 60, "{reply}");
    let refreshed = client
        .call(
            "sub_refresh",
            json!({"channel": "locked:s", "token": sub_token(now() + 3600)}),
        )
        .await;
    assert_eq!(refreshed["sub_refresh"]["expires"], true, "{refreshed}");
    assert!(refreshed["sub_refresh"]["ttl"].as_u64().unwrap() > 3500);
    // A token for another channel is invalid: the connection is closed (3500).
    let other = token_with(json!({"sub": "alice", "channel": "locked:other", "exp": now() + 60}));
    client
        .send(json!({"id": 50, "sub_refresh": {"channel": "locked:s", "token": other}}))
        .await;
    assert_eq!(
        client.closed().await,
        Closed::Code(3500, "invalid token".into())
    );
    // An expired one ends the connection as "subscription expired" (3006, the SDK reconnects).
    let mut client = server.client("alice").await;
    client
        .call(
            "subscribe",
            json!({"channel": "locked:s", "token": sub_token(now() + 60)}),
        )
        .await;
    client.send(json!({"id": 51, "sub_refresh": {"channel": "locked:s", "token": sub_token(now() - 10)}})).await;
    assert_eq!(
        client.closed().await,
        Closed::Code(3006, "subscription expired".into())
    );
}

#[tokio::test]
async fn rs256_tokens_with_audience_through_the_server() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../herald-auth/tests/keys");
    let server = TestServer::with(|c| {
        c.client.token.hmac_secret.clear();
        c.client.token.rsa_public_key = format!("{keys}/rsa_public.pem");
        c.client.token.audience = "herald-test".into();
    })
    .await;
    let private = std::fs::read_to_string(format!("{keys}/rsa_private.pem")).unwrap();
    let sign =
        |claims: serde_json::Value| herald_auth::sign(&claims, "RS256", &private, None).unwrap();
    let mut client = Client::open(&server.ws_url()).await;
    let ok = client
        .call(
            "connect",
            json!({"token": sign(json!({"sub": "rita", "aud": "herald-test"}))}),
        )
        .await;
    assert!(ok.get("connect").is_some(), "{ok}");
    let mut wrong_aud = Client::open(&server.ws_url()).await;
    wrong_aud
        .send(json!({"id": 1, "connect": {"token": sign(json!({"sub": "rita", "aud": "other"}))}}))
        .await;
    assert_eq!(
        wrong_aud.closed().await,
        Closed::Code(3500, "invalid token".into())
    );
    let mut hmac = Client::open(&server.ws_url()).await;
    hmac.send(json!({"id": 1, "connect": {"token": token("rita")}}))
        .await;
    assert_eq!(
        hmac.closed().await,
        Closed::Code(3500, "invalid token".into()),
        "HS256 is not accepted by an RSA key"
    );
}

#[tokio::test]
async fn history_ttl_expires_publications_through_the_server() {
    let server =
        TestServer::with(|c| c.channel.namespaces[0].history_ttl = Duration::from_millis(300))
            .await;
    server
        .api_ok("publish", json!({"channel": "chat:ttl", "data": 1}))
        .await;
    let fresh = server
        .api_ok("history", json!({"channel": "chat:ttl", "limit": -1}))
        .await;
    assert_eq!(fresh["publications"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expired = server
        .api_ok("history", json!({"channel": "chat:ttl", "limit": -1}))
        .await;
    assert_eq!(expired["publications"], json!([]));
    assert_eq!(
        expired["offset"], 1,
        "the stream position outlives the publications"
    );
}

#[tokio::test]
async fn positioned_subscription_reports_the_stream_position() {
    let server = TestServer::with(|c| c.channel.namespaces[0].force_recovery = false).await;
    server
        .api_ok("publish", json!({"channel": "chat:pos", "data": 1}))
        .await;
    server
        .api_ok("publish", json!({"channel": "chat:pos", "data": 2}))
        .await;
    let mut client = server.client("alice").await;
    let plain = client
        .call("subscribe", json!({"channel": "chat:pos"}))
        .await;
    assert!(plain["subscribe"].get("positioned").is_none(), "{plain}");
    client
        .call("unsubscribe", json!({"channel": "chat:pos"}))
        .await;
    let positioned = client
        .call(
            "subscribe",
            json!({"channel": "chat:pos", "positioned": true}),
        )
        .await;
    let sub = &positioned["subscribe"];
    assert_eq!(sub["positioned"], true, "{positioned}");
    assert_eq!(sub["offset"], 2);
    assert!(!sub["epoch"].as_str().unwrap().is_empty());
    assert!(
        sub.get("recoverable").is_none(),
        "positioned only, not recoverable"
    );
}
