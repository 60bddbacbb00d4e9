//! Enums with stable names: event kinds and workflow steps are stored (SQLite rows, etcd
//! JSON, the state document) and shown (API, CLI, logs) by a fixed kebab-case name.
//!
//! [`named!`] writes such an enum with `as_str`, `from_name`, `Display` and a serde form that
//! is exactly the name. Reading is lenient on purpose, with a custom `Deserialize` rather than
//! `#[serde(other)]`: a name this build does not know (written by a newer or older version)
//! becomes `Other(name)` instead of failing the load, and is written back unchanged.

/// `named! { pub enum Kind { Variant => "name", ... } }`: the enum plus an `Other(String)`
/// variant for unknown names.
macro_rules! named {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A name this build does not know, kept as it was read.
            Other(String),
        }

        impl $name {
            /// Every named variant (not `Other`).
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable name, as stored and shown.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(name) => name,
                }
            }

            /// The variant named `name`, or `Other(name)`.
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Ok($name::from_name(&name))
            }
        }
    };
}

pub(super) use named;
