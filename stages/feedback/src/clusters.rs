//! StackStorm clients for the clusters in `whale.toml` (`[clusters.<name>]`, plus `default` from
//! `WHALE_ST2_URL`), so feedback and task management reach an execution on the cluster whale's
//! own record names.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use whale_kernel::config::ClusterConfig;
use whale_kernel::Config;
use whale_st2::{Auth, ClusterConn, St2Client};

/// One client per configured cluster.
#[derive(Clone, Default)]
pub struct Clusters {
    clients: BTreeMap<String, St2Client>,
}

impl Clusters {
    /// Builds a client for every cluster; a cluster with an unusable URL is refused.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Clusters> {
        let mut clients = BTreeMap::new();
        for (name, c) in &cfg.clusters {
            let client = client(c).with_context(|| format!("cluster {name:?}"))?;
            clients.insert(name.clone(), client);
        }
        Ok(Clusters { clients })
    }

    pub fn get(&self, name: &str) -> Option<&St2Client> {
        self.clients.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &St2Client)> {
        self.clients.iter()
    }

    pub fn names(&self) -> Vec<&str> {
        self.clients.keys().map(String::as_str).collect()
    }
}

fn client(c: &ClusterConfig) -> anyhow::Result<St2Client> {
    let auth = match &c.api_key {
        Some(k) => Auth::ApiKey(whale_st2::Secret::new(k.expose())),
        None => Auth::None,
    };
    let conn = ClusterConn::new(c.url.clone(), auth)
        .with_timeout(Duration::from_secs(10))
        .with_ca_file(c.ca_file.clone());
    Ok(St2Client::new(conn)?)
}
