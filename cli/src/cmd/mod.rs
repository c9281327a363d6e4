//! Subcommands of the `ringwire` binary other than `decode`.

pub mod bench;
pub mod ping;
pub mod serve;

use std::path::PathBuf;

use ringwire::proto::endpoint::{parse_auth_methods, parse_modes};
use ringwire::proto::{AuthMethod, EntityAddr, EntityName, EntityType, ModeName};
use ringwire::Options;

/// A client's authentication options, Ceph's names and syntax. (`::std::vec::Vec`: one
/// value holding a list, not a repeated option.)
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Keyring holding our key (`keyring`): cephx with it, auth none without.
    #[arg(short = 'k', long)]
    pub keyring: Option<PathBuf>,
    /// Auth methods offered, preferred first (`auth_client_required`: "cephx", "cephx,none",
    /// "none"); default: cephx with a keyring, none without.
    #[arg(long, value_parser = parse_auth_methods)]
    pub auth_client_required: Option<::std::vec::Vec<AuthMethod>>,
    /// Connection modes offered to monitors, preferred first (`ms_mon_client_mode`).
    #[arg(long, default_value = "secure crc", value_parser = parse_modes)]
    pub ms_mon_client_mode: ::std::vec::Vec<ModeName>,
    /// Connection modes offered to other daemons, preferred first (`ms_client_mode`).
    #[arg(long, default_value = "crc secure", value_parser = parse_modes)]
    pub ms_client_mode: ::std::vec::Vec<ModeName>,
}

impl AuthArgs {
    pub fn apply(&self, o: &mut Options) {
        o.keyring = self.keyring.clone();
        // -k means cephx, as with Ceph's tools: a keyring without our key is an error, not
        // a quiet fall-back to auth none.
        o.auth_client_required = match (&self.auth_client_required, &self.keyring) {
            (Some(list), _) => Some(list.clone()),
            (None, Some(_)) => Some(vec![AuthMethod::Cephx]),
            (None, None) => None,
        };
        o.ms_mon_client_mode = self.ms_mon_client_mode.clone();
        o.ms_client_mode = self.ms_client_mode.clone();
    }
}

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
