//! The names of every section and key the config file accepts, read from
//! the types serde deserializes (so a key added to a section is listed here
//! without anyone remembering to): `docs/reference.md` is checked against
//! this list by `tests/docs.rs`, so the reference cannot drift from the
//! code. Nothing here parses a file.

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::alerts::AlertsConfig;
use super::assignment::AssignmentConfig;
use super::sections::{
    CallbackConfig, Config, DeliverConfig, DockerConfig, EmailConfig, GitlabConfig, GraderConfig,
    NativeConfig, ServerConfig, SlurmConfig, SpoolConfig,
};
use super::web::WebConfig;

/// One table of the config file and the keys it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionKeys {
    /// As written in the file: `server`, or `assignments.NAME`.
    pub section: &'static str,
    pub keys: &'static [&'static str],
}

/// Every section of the file with its keys, in the order of [`Config`].
///
/// Panics when `Config` has a section this function does not know: a new
/// section must say here where its keys come from (a test runs this).
pub fn all() -> Vec<SectionKeys> {
    fields_of::<Config>()
        .iter()
        .map(|&section| SectionKeys {
            section: if section == "assignments" {
                "assignments.NAME"
            } else {
                section
            },
            keys: keys_of(section),
        })
        .collect()
}

fn keys_of(section: &str) -> &'static [&'static str] {
    match section {
        "server" => fields_of::<ServerConfig>(),
        "spool" => fields_of::<SpoolConfig>(),
        "gitlab" => fields_of::<GitlabConfig>(),
        "grader" => fields_of::<GraderConfig>(),
        "docker" => fields_of::<DockerConfig>(),
        "native" => fields_of::<NativeConfig>(),
        "slurm" => fields_of::<SlurmConfig>(),
        "callback" => fields_of::<CallbackConfig>(),
        "email" => fields_of::<EmailConfig>(),
        "deliver" => fields_of::<DeliverConfig>(),
        "alerts" => fields_of::<AlertsConfig>(),
        "web" => fields_of::<WebConfig>(),
        "assignments" => fields_of::<AssignmentConfig>(),
        other => panic!("config::keys does not know the section [{other}]: add it to keys_of"),
    }
}

/// The field names a derived `Deserialize` asks for: serde hands them to
/// `deserialize_struct`, and this deserializer records them and stops.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut seen = None;
    let _ = T::deserialize(FieldNames { seen: &mut seen });
    seen.unwrap_or_else(|| panic!("{} is not a struct", std::any::type_name::<T>()))
}

struct FieldNames<'a> {
    seen: &'a mut Option<&'static [&'static str]>,
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.seen = Some(fields);
        Err(Stop)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_and_its_keys_are_listed() {
        let all = all();
        let server = all.iter().find(|s| s.section == "server").unwrap();
        assert!(server.keys.contains(&"webhook_token_file"), "{server:?}");
        let assignment = all
            .iter()
            .find(|s| s.section == "assignments.NAME")
            .unwrap();
        assert!(assignment.keys.contains(&"deadline"), "{assignment:?}");
        // Secrets are resolved, never written in the file.
        assert!(all.iter().all(|s| s.section != "secrets"), "{all:?}");
    }
}
