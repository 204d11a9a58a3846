//! How a Pusher event becomes a Herald publication, so that Centrifugo subscribers of the same
//! channel receive it: the event's data string is the publication's data when it holds JSON (as
//! the SDKs send objects), else a JSON string holding it; the event name travels in the tag
//! `event`.

use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub use crate::core::wire::PUSHER_EVENT_TAG as EVENT_TAG;

/// The publication data of a Pusher event's data string.
pub fn publication_data(data: &str) -> Box<RawValue> {
    match serde_json::from_str::<Box<RawValue>>(data) {
        Ok(json) => json,
        // Text that is not JSON: the publication carries it as a JSON string.
        Err(_) => RawValue::from_string(serde_json::Value::from(data).to_string())
            .unwrap_or_else(|_| RawValue::NULL.to_owned()),
    }
}

/// The publication tags of a Pusher event named `name`.
pub fn publication_tags(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(EVENT_TAG.to_string(), name.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_is_kept_as_json_and_text_becomes_a_string() {
        assert_eq!(
            publication_data(r#"{"id":7,"total":"9.50"}"#).get(),
            r#"{"id":7,"total":"9.50"}"#
        );
        assert_eq!(publication_data("42").get(), "42");
        assert_eq!(
            publication_data("hello \"world\"").get(),
            r#""hello \"world\"""#
        );
        assert_eq!(publication_data("").get(), r#""""#);
        assert_eq!(publication_tags("order.created")["event"], "order.created");
    }
}
