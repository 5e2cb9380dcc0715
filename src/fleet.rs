//! The fleet: regions and their hosts, resolved from the config into [`Host`]s with a
//! transport each. The primary region comes first.

use std::path::Path;

use crate::config::{Config, Target};
use crate::error::Error;
use crate::host::Host;
use crate::transport::{LocalTransport, SshOptions, SshTransport, Transport};

#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub primary: bool,
    /// Instances of the default process group.
    pub count: u32,
    /// Instances of each process group, in the order they roll out (the default
    /// group first: it is what users reach).
    pub counts: Vec<(String, u32)>,
    pub hosts: Vec<Host>,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    pub regions: Vec<Region>,
}

/// Where the local target keeps its simulated hosts, next to `fly.toml`.
pub fn local_root(config_dir: &Path) -> std::path::PathBuf {
    config_dir.join(".ferry").join("local")
}

impl Fleet {
    pub fn from_config(config: &Config, ssh: &SshOptions) -> Result<Self, Error> {
        let primary = config.primary();
        let mut regions = Vec::new();
        for (name, region) in config.regions() {
            let hosts = match config.ferry.target {
                Target::Local => {
                    let root = local_root(&config.dir).join(&name).join("local");
                    vec![Host {
                        name: format!("local/{name}"),
                        region: name.clone(),
                        transport: Transport::Local(LocalTransport::new(format!("local/{name}"))),
                        app_dir: root.join(&config.app).display().to_string(),
                    }]
                }
                Target::Ssh => {
                    if region.hosts.is_empty() {
                        return Err(Error::Usage {
                            message: format!("region `{name}` has no hosts; the ssh target needs `hosts` in `[ferry.regions.{name}]`"),
                            hint: Some(format!("for example: `[ferry.regions.{name}]` `hosts = [\"deploy@{name}1.example.com\"]`")),
                        });
                    }
                    let root = config.ferry.root.trim_end_matches('/');
                    region
                        .hosts
                        .iter()
                        .map(|spec| Host {
                            name: spec.clone(),
                            region: name.clone(),
                            transport: Transport::Ssh(SshTransport::new(spec, ssh.clone())),
                            app_dir: format!("{root}/{}", config.app),
                        })
                        .collect()
                }
            };
            let default = config.default_group();
            let mut groups = config.groups();
            groups.sort_by_key(|g| *g != default);
            let counts = groups.into_iter().map(|g| (g.clone(), region.count_of(&g))).collect();
            regions.push(Region { primary: name == primary, name, count: region.count_of(&default), counts, hosts });
        }
        regions.sort_by_key(|r| !r.primary);
        Ok(Self { regions })
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.regions.iter().flat_map(|r| r.hosts.iter())
    }

    pub fn primary(&self) -> Option<&Region> {
        self.regions.first()
    }

    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }

    /// Closes the port forwards opened through the hosts' connections, all at once.
    pub async fn close(&self) {
        crate::host::on_each(self.hosts().cloned(), |host| async move { host.transport.close_forwards().await }).await;
    }
}
