//! One instance at a time: its environment, moving it to a version behind its checks,
//! and putting it back as it was. Reports through events; the rollout decides what
//! to do about a failure.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::health::Checks;
use crate::host::{now_ms, Env, Host, HostError, Identity, InstanceRecord, Launch, Stop};
use crate::settings::InstanceSettings;

use super::outcome::Cause;
use super::plan::Step;

/// What every instance of a rollout runs with.
#[derive(Debug, Clone)]
pub struct Spec {
    pub app: String,
    pub primary: String,
    /// The process group (`FLY_PROCESS_GROUP`).
    pub group: String,
    pub instance: InstanceSettings,
    /// The start command.
    pub start: String,
    pub checks: Checks,
    pub wait_timeout: Duration,
    /// Set for a revert: the host starts this version as it last ran (see [`Launch::as_ran`]).
    pub as_ran: Option<String>,
}

fn digest(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What instances of these settings run with, as digests (the secrets' digest is the
/// host's: it is filled in there).
pub fn identity(instance: &InstanceSettings, start: &str, checks: &Checks) -> Identity {
    // Other services' ports count as environment (the names of their variables); with
    // none, the digest is what it always was.
    let env = if instance.extra_ports.is_empty() {
        serde_json::to_vec(&instance.env)
    } else {
        serde_json::to_vec(&(&instance.env, &instance.extra_ports))
    };
    Identity {
        env: digest(&env.unwrap_or_default()),
        secrets: String::new(),
        start: digest(start.as_bytes()),
        checks: digest(&serde_json::to_vec(checks.probes()).unwrap_or_default()),
        supervision: digest(
            &serde_json::to_vec(&(&instance.kill_signal, instance.kill_timeout, instance.restart)).unwrap_or_default(),
        ),
    }
}

impl Spec {
    pub fn stop(&self) -> Stop {
        Stop { signal: self.instance.kill_signal.clone(), timeout: self.instance.kill_timeout }
    }

    pub fn identity(&self) -> Identity {
        identity(&self.instance, &self.start, &self.checks)
    }

    /// How the instance of `record` runs.
    fn launch(&self, env: Env) -> Launch {
        Launch {
            start: self.start.clone(),
            env,
            checks: self.checks.clone(),
            stop: self.stop(),
            restart: self.instance.restart,
            as_ran: self.as_ran.clone(),
        }
    }

    /// The environment of one instance: `[env]`, then ferry's own variables (which
    /// win, so `PORT` is always the port ferry chose). Secrets are added on the host.
    pub fn env(&self, record: &InstanceRecord, primary_addr: Option<&str>, address: &str) -> Env {
        let mut env = self.instance.env.clone();
        // Where other instances reach this one (a BEAM node's name carries it).
        env.insert("FERRY_PRIVATE_ADDR".into(), address.to_string());
        if let Some(addr) = primary_addr {
            env.insert("FERRY_PRIMARY_ADDR".into(), addr.to_string());
        }
        for (internal, port) in &record.ports {
            env.insert(format!("FERRY_PORT_{internal}"), port.to_string());
        }
        for (key, value) in [
            ("PORT", record.port.to_string()),
            ("FLY_APP_NAME", self.app.clone()),
            ("FLY_REGION", record.region.clone()),
            ("PRIMARY_REGION", self.primary.clone()),
            ("FERRY_INSTANCE_ID", record.id.clone()),
            ("FLY_MACHINE_ID", record.id.clone()),
            ("FLY_PROCESS_GROUP", self.group.clone()),
            ("RELEASE_VERSION", record.version.clone()),
        ] {
            env.insert(key.to_string(), value);
        }
        Env(env)
    }
}

/// `FERRY_VOLUME_<NAME>`: where an instance finds the volume named NAME.
pub fn volume_env(name: &str) -> String {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("FERRY_VOLUME_{upper}")
}

/// The record of `step`'s instance on `version`, with what it will run with.
pub fn record(step: &Step, version: &str, port: u16, created_at: u64, config: Identity) -> InstanceRecord {
    InstanceRecord {
        id: step.id.clone(),
        region: step.region.clone(),
        group: step.group.clone(),
        host: step.host.clone(),
        version: version.to_string(),
        port,
        ports: std::collections::BTreeMap::new(),
        created_at,
        started_at: now_ms(),
        pid: 0,
        starttime: 0,
        boot: String::new(),
        config,
    }
}

fn host_cause(doing: &str, error: &HostError) -> Cause {
    Cause::Host { step: doing.to_string(), message: crate::error::chain(error) }
}

/// A started instance that passed its checks: its process, and how long it took.
pub struct Started {
    pub pid: u32,
    pub elapsed: Duration,
}

/// Starts `record` (stopping the instance's old process first when `replace`) and
/// waits until it is healthy.
pub async fn start_and_wait(
    spec: &Spec,
    host: &Host,
    record: &InstanceRecord,
    replace: bool,
    primary_addr: Option<&str>,
) -> Result<Started, Cause> {
    let mut env = spec.env(record, primary_addr, &host.address());
    let mounts = &spec.instance.mounts;
    let stop = spec.stop();
    let pid = if replace && mounts.is_empty() {
        // Stop and start in one round trip.
        host.switch_instance(record, &spec.launch(env))
            .await
            .map_err(|e| host_cause(&format!("replacing the old version with {}", record.version), &e))?
    } else {
        if replace {
            host.stop_instance(&record.id, &stop).await.map_err(|e| host_cause("stopping the old version", &e))?;
        }
        // The old process held the volumes: attach them once it is gone.
        for mount in mounts {
            let path = host
                .volume_attach(&record.id, &mount.source, &mount.destination)
                .await
                .map_err(|e| host_cause(&format!("attaching volume `{}`", mount.source), &e))?;
            env.0.insert(volume_env(&mount.source), path);
        }
        host.start_instance(record, &spec.launch(env))
            .await
            .map_err(|e| host_cause(&format!("starting {}", record.version), &e))?
    };
    match host.wait_healthy(&record.id, pid, spec.wait_timeout).await {
        Ok(Ok(elapsed)) => Ok(Started { pid, elapsed }),
        Ok(Err(failure)) => Err(Cause::Health { failure, version: record.version.clone() }),
        Err(e) => Err(host_cause("watching the instance", &e)),
    }
}

/// Waits until an instance that passed its checks has stayed up `min_healthy`.
pub async fn stabilize(host: &Host, record: &InstanceRecord, pid: u32, min_healthy: Duration) -> Result<(), Cause> {
    match host.wait_stable(&record.id, pid, min_healthy).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(failure)) => Err(Cause::Health { failure, version: record.version.clone() }),
        Err(e) => Err(host_cause("watching the instance", &e)),
    }
}

/// Puts one instance back as it was before this rollout touched it: its previous
/// version behind its checks, or removed when it was new.
pub async fn revert(
    spec: &Spec,
    host: &Host,
    step: &Step,
    port: u16,
    primary_addr: Option<&str>,
) -> Result<(), String> {
    let stopped = host.stop_instance(&step.id, &spec.stop()).await;
    match (back_to(step), stopped) {
        (_, Err(e)) => Err(format!("could not stop it: {e}")),
        (None, Ok(_)) => host.remove_instance(&step.id).await.map_err(|e| e.to_string()),
        (Some((version, previous)), Ok(_)) => {
            let mut record = record(step, version, port, previous.created_at, previous.config.clone());
            record.ports.clone_from(&previous.ports);
            start_as_ran(spec, host, &record, primary_addr).await?;
            host.cutover(vec![step.id.clone()], Vec::new(), &spec.stop()).await.map_err(|e| e.to_string())
        }
    }
}

/// The version a step's instance goes back to, with its old record; `None` when it
/// was new, or when nothing ever completed on its host.
fn back_to(step: &Step) -> Option<(&str, &InstanceRecord)> {
    Some((step.revert_to.as_deref()?, step.previous.as_ref()?))
}

/// Starts `record`'s version as it ran when its host last made it current (the host
/// falls back to this rollout's settings when it kept no such record).
async fn start_as_ran(
    spec: &Spec,
    host: &Host,
    record: &InstanceRecord,
    primary_addr: Option<&str>,
) -> Result<(), String> {
    let spec = Spec { as_ran: Some(record.version.clone()), ..spec.clone() };
    start_and_wait(&spec, host, record, false, primary_addr).await.map(|_| ()).map_err(|cause| cause.to_string())
}

/// Puts back the previous version of a step that replaced its instance beside the
/// old one, the same way: a new instance of the previous version on `port`, healthy,
/// then one switch that retires the step's instance.
pub async fn revert_beside(
    spec: &Spec,
    host: &Host,
    step: &Step,
    (port, ports): (u16, std::collections::BTreeMap<u16, u16>),
    primary_addr: Option<&str>,
) -> Result<(), String> {
    let Some((version, previous)) = back_to(step) else {
        return host.remove_instance(&step.id).await.map_err(|e| e.to_string());
    };
    let back = Step { id: crate::deploy::new_instance_id(), ..step.clone() };
    let mut record = record(&back, version, port, previous.created_at, previous.config.clone());
    record.ports = ports;
    if let Err(cause) = start_as_ran(spec, host, &record, primary_addr).await {
        // The step's instance keeps serving; the one that could not go back goes.
        let _ = host.remove_instance(&back.id).await;
        return Err(cause);
    }
    host.cutover(vec![back.id.clone()], vec![step.id.clone()], &spec.stop()).await.map_err(|e| e.to_string())
}
