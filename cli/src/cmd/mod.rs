//! Subcommands of the `ringwire` binary other than `decode`.

pub mod bench;
pub mod ping;
pub mod serve;

use ringwire::proto::{EntityAddr, EntityName, EntityType};

/// Parses `osd`, `mon`, `client`, `mds`, `mgr`.
pub fn parse_entity_type(s: &str) -> Result<EntityType, String> {
    EntityType::from_name(s)
        .ok_or_else(|| format!("unknown entity type {s:?} (mon, osd, client, mds, mgr)"))
}

/// Parses `osd.0`, `client.admin`.
pub fn parse_entity_name(s: &str) -> Result<EntityName, String> {
    s.parse()
}

pub fn parse_addr(s: &str) -> Result<EntityAddr, String> {
    EntityAddr::parse(s)
}
