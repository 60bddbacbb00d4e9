//! Shards of the fleet (`store.shards` > 1): which server belongs to which shard, the config
//! one shard's engine runs with, and the checks of the assignment.
//!
//! A server's shard is its `shard` field when set; otherwise a primary's is a stable hash of
//! its id (FNV-1a, modulo the shard count) and the spares are dealt round-robin, in config
//! order, over the shards (spare number *i* without a `shard` goes to shard *i* mod N), so
//! every shard gets its share of spares and duplexes within itself.

use super::field::Errors;
use super::Config;
use crate::types::Role;

impl Config {
    /// The shard count (1: one leader for the whole fleet).
    pub fn shards(&self) -> u32 {
        self.store.shards.max(1)
    }

    /// The shard of every server, in config order.
    pub fn shard_assignment(&self) -> Vec<u32> {
        let n = self.shards();
        let mut spares = 0u32;
        self.servers
            .iter()
            .map(|s| match s.shard {
                Some(k) => k,
                None if s.role == Role::Spare => {
                    spares += 1;
                    (spares - 1) % n
                }
                None => (crate::digest::fnv1a64(s.id.as_bytes()) % u64::from(n)) as u32,
            })
            .collect()
    }

    /// The shard of server `id`, if the config has it.
    pub fn shard_of(&self, id: &str) -> Option<u32> {
        let shards = self.shard_assignment();
        self.servers
            .iter()
            .zip(shards)
            .find(|(s, _)| s.id == id)
            .map(|(_, k)| k)
    }

    /// The config shard `k`'s engine runs with: its own servers only, and its share of
    /// `budget.min_available_capacity` (in proportion to its primaries' capacity, rounded up,
    /// so the shards' floors together are at least the fleet's). `budget.max_concurrent` stays
    /// the fleet's: the engine is held to the slots its shard holds in the store besides.
    pub fn for_shard(&self, k: u32) -> Config {
        let shards = self.shard_assignment();
        let total = primary_capacity(self.servers.iter());
        let mut cfg = self.clone();
        cfg.servers = self
            .servers
            .iter()
            .zip(&shards)
            .filter(|(_, s)| **s == k)
            .map(|(s, _)| s.clone())
            .collect();
        let mine = primary_capacity(cfg.servers.iter());
        if total > 0 {
            let floor = u64::from(self.budget.min_available_capacity) * u64::from(mine);
            cfg.budget.min_available_capacity = floor.div_ceil(u64::from(total)) as u32;
        }
        cfg
    }

    /// `servers[i].shard` within `store.shards`, and every shard with a primary.
    pub(crate) fn validate_shards(&self, errs: &mut Errors) {
        let n = self.shards();
        for (i, s) in self.servers.iter().enumerate() {
            if let Some(k) = s.shard {
                if k >= n {
                    errs.add(
                        format!("servers[{i}].shard"),
                        format!("must be below store.shards ({n})"),
                    );
                }
            }
        }
        if n <= 1 || self.servers.is_empty() {
            return;
        }
        let shards = self.shard_assignment();
        for k in 0..n {
            let primaries = self
                .servers
                .iter()
                .zip(&shards)
                .filter(|(s, sh)| **sh == k && s.role == Role::Primary)
                .count();
            if primaries == 0 {
                errs.add(
                    "store.shards",
                    format!("shard {k} has no primary: fewer shards, or set servers' `shard`"),
                );
            }
        }
    }
}

fn primary_capacity<'a>(servers: impl Iterator<Item = &'a super::ServerConfig>) -> u32 {
    servers
        .filter(|s| s.role == Role::Primary)
        .map(|s| s.capacity)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(shards: u32) -> Config {
        let mut t = String::from(
            "[cluster]\nname = \"c\"\nmode = \"active-standby\"\n[auth]\nagent_token_file = \"/t\"\napi_token_file = \"/t\"\n[store]\nkind = \"etcd\"\n",
        );
        t.push_str(&format!("shards = {shards}\n[budget]\nmin_available_capacity = 10\n[services.web]\ncommand = \"/bin/true\"\nhealth = {{ path = \"/\" }}\n"));
        for i in 0..12 {
            let role = if i < 9 { "primary" } else { "spare" };
            t.push_str(&format!(
                "[[servers]]\nid = \"s{i}\"\naddress = \"127.0.0.{}\"\nagent = \"127.0.0.{}:7001\"\nrole = \"{role}\"\nport_range = [20000, 20099]\n",
                i + 1,
                i + 1
            ));
        }
        toml::from_str(&t).unwrap()
    }

    #[test]
    fn every_server_has_one_shard_and_spares_are_dealt_round_robin() {
        let cfg = fleet(3);
        let a = cfg.shard_assignment();
        assert_eq!(a, cfg.shard_assignment(), "stable");
        assert!(a.iter().all(|k| *k < 3));
        assert_eq!(&a[9..], &[0, 1, 2], "spares dealt round-robin");
        let total: usize = (0..3).map(|k| cfg.for_shard(k).servers.len()).sum();
        assert_eq!(total, 12);
        assert_eq!(cfg.shard_of("s10"), Some(1));
    }

    #[test]
    fn the_shards_floors_add_up_to_at_least_the_fleets() {
        let cfg = fleet(3);
        let floors: u32 = (0..3)
            .map(|k| cfg.for_shard(k).budget.min_available_capacity)
            .sum();
        assert!(floors >= 10, "{floors}");
        assert_eq!(fleet(1).for_shard(0).budget.min_available_capacity, 10);
    }

    #[test]
    fn a_shard_out_of_range_is_an_error() {
        let mut cfg = fleet(2);
        cfg.servers[0].shard = Some(2);
        let mut errs = Errors::default();
        cfg.validate_shards(&mut errs);
        let text = format!("{:?}", errs);
        assert!(text.contains("servers[0].shard"), "{text}");
    }
}
