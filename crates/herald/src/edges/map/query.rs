//! Decoding `application/x-www-form-urlencoded` query strings.

/// The `key=value` pairs of a query string, percent- and plus-decoded; invalid UTF-8 becomes
/// U+FFFD and a stray `%` stays as it is (the caller validates values anyway).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        assert_eq!(
            pairs("device=truck%207&from=1&x+y=a+b&bad=%zz%4&&flag"),
            vec![
                ("device".into(), "truck 7".into()),
                ("from".into(), "1".into()),
                ("x y".into(), "a b".into()),
                ("bad".into(), "%zz%4".into()),
                ("flag".into(), String::new()),
            ]
        );
    }
}
