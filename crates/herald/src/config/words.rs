//! Settings that take one of a few words (`broker.kind = "redis"`). They are read into enums
//! when the configuration loads, so a typo is an error that lists the accepted words, and the
//! code that uses them matches on variants instead of comparing strings.

/// `"redsi" is not one of "memory", "redis", "nats"`.
pub(crate) fn not_one_of(text: &str, words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    format!("{text:?} is not one of {}", quoted.join(", "))
}

/// An enum whose variants are written as the given words in the configuration (and in
/// environment variables and `--set` flags, which are read as the same text).
macro_rules! word_setting {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $word:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every accepted word, in the order errors list them.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The word that stands for this value in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($word => Ok($name::$variant),)+
                    _ => Err($crate::config::words::not_one_of(text, Self::WORDS)),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> &'static str {
                value.as_str()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use word_setting;

#[cfg(test)]
mod tests {
    word_setting! {
        /// A test setting.
        pub enum Colour {
            Red = "red",
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn words_parse_print_and_list_the_accepted_ones() {
        assert_eq!("dark_blue".parse(), Ok(Colour::DarkBlue));
        assert_eq!(Colour::Red.to_string(), "red");
        assert_eq!(
            "green".parse::<Colour>(),
            Err("\"green\" is not one of \"red\", \"dark_blue\"".to_string())
        );
        assert_eq!(
            toml::Value::try_from(Colour::DarkBlue).ok(),
            Some(toml::Value::String("dark_blue".into()))
        );
    }
}
