//! Where each host's front door listens. On SSH hosts: the app's public ports, on
//! `[ferry.proxy] bind` (all addresses by default). On the local target every region
//! is on this machine: each region's door listens on a loopback address of its own at
//! the service's internal port, the primary region's on 127.0.0.1, so that
//! `127.0.0.1:<internal_port>` reaches the primary region.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::proto::Door;
use crate::host::Host;
use crate::settings::ProxySettings;

/// The loopback address of each region of the local target: the primary's is
/// 127.0.0.1; another's is drawn from its name (stable as regions come and go),
/// moving on when two regions would meet.
pub fn local_addresses(fleet: &Fleet) -> BTreeMap<String, Ipv4Addr> {
    let mut addresses = BTreeMap::new();
    let mut taken = vec![1u8];
    let mut names: Vec<(&str, bool)> = fleet.regions.iter().map(|r| (r.name.as_str(), r.primary)).collect();
    names.sort_unstable();
    for (name, primary) in names {
        if primary {
            addresses.insert(name.to_string(), Ipv4Addr::LOCALHOST);
            continue;
        }
        let hash = name.bytes().fold(2_166_136_261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619));
        let mut last = u8::try_from(2 + hash % 250).unwrap_or(2);
        while taken.contains(&last) {
            last = if last >= 251 { 2 } else { last + 1 };
        }
        taken.push(last);
        addresses.insert(name.to_string(), Ipv4Addr::new(127, 0, 0, last));
    }
    addresses
}

/// The doors of `host`.
pub fn for_host(proxy: &ProxySettings, host: &Host, local: &BTreeMap<String, Ipv4Addr>) -> Result<Vec<Door>, Error> {
    let (ip, ports) = if host.transport.is_local() {
        let ip = local.get(&host.region).copied().unwrap_or(Ipv4Addr::LOCALHOST);
        (IpAddr::V4(ip), &proxy.local)
    } else {
        (bind_address(proxy, host)?, &proxy.public)
    };
    Ok(ports
        .iter()
        .map(|door| Door {
            listen: SocketAddr::new(ip, door.port),
            kind: door.kind,
            hosts: proxy.hosts.clone(),
            region: host.region.clone(),
            tls: if door.tls { proxy.tls.clone() } else { None },
            redirect_https: door.redirect_https,
            groups: door.groups.clone(),
            target: door.target,
        })
        .collect())
}

fn bind_address(proxy: &ProxySettings, host: &Host) -> Result<IpAddr, Error> {
    match proxy.bind.as_deref() {
        None => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Some("host") => {
            let address = host.address();
            if let Ok(ip) = address.parse::<IpAddr>() {
                return Ok(ip);
            }
            (address.as_str(), 0).to_socket_addrs().ok().and_then(|mut addrs| addrs.next()).map(|a| a.ip()).ok_or_else(
                || Error::Usage {
                    message: format!("`[ferry.proxy] bind = \"host\"`: cannot resolve `{address}` to an address"),
                    hint: Some("set `bind` to the IP address the front door should listen on".into()),
                },
            )
        }
        Some(ip) => ip.parse().map_err(|_| Error::Usage {
            message: format!("`[ferry.proxy] bind` `{ip}` is not an IP address"),
            hint: None,
        }),
    }
}

/// Opens the front door on every host (each host's set exactly), before anything
/// else changes: a port a host will not give fails the operation with nothing done.
pub async fn open(proxy: &ProxySettings, fleet: &Fleet) -> Result<(), Error> {
    let local = local_addresses(fleet);
    let mut planned = BTreeMap::new();
    for host in fleet.hosts() {
        planned.insert(host.name.clone(), for_host(proxy, host, &local)?);
    }
    let planned = &planned;
    let results = crate::host::on_each(fleet.hosts().cloned(), |host| {
        let doors = planned.get(&host.name).cloned().unwrap_or_default();
        async move { host.open_doors(doors).await }
    })
    .await;
    for (_, result) in results {
        result.map_err(|source| Error::Host { step: "opening the front door", source })?;
    }
    Ok(())
}
