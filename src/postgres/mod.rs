//! PostgreSQL as ferry sees it: a database named by a connection URL (parsed by
//! tokio-postgres, never by hand), described without its password. Dumps run on a
//! host through `host::backup_*`; the password reaches `pg_dump` only through a 0600
//! pgpass file, never an argument or an output line.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a dump connects, password kept apart: it is never shown, and travels to a
/// host only on stdin or the agent's socket, to end up in a 0600 pgpass file.
#[derive(Clone, Serialize, Deserialize)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub name: String,
    password: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{var}` is not a PostgreSQL connection URL ({reason})")]
pub struct UrlError {
    pub var: String,
    pub reason: String,
}

impl Database {
    /// Parses `url` (from the variable `var`, named in errors; the URL itself never is).
    pub fn from_url(var: &str, url: &str) -> Result<Self, UrlError> {
        let err = |reason: &str| UrlError { var: var.to_string(), reason: reason.to_string() };
        let config = tokio_postgres::Config::from_str(url).map_err(|_| err("it does not parse"))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => return Err(err("it names no host")),
        };
        let user = config.get_user().ok_or_else(|| err("it names no user"))?.to_string();
        Ok(Self {
            port: config.get_ports().first().copied().unwrap_or(5432),
            name: config.get_dbname().map_or_else(|| user.clone(), str::to_string),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            host,
            user,
        })
    }

    /// `host:port/name`, for reports and metadata.
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.name)
    }

    /// A pgpass file (`host:port:db:user:password`, `:` and `\` escaped): the only
    /// place the password goes.
    pub fn pgpass(&self) -> String {
        let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        match &self.password {
            Some(password) => format!(
                "{}:{}:{}:{}:{}\n",
                escape(&self.host),
                self.port,
                escape(&self.name),
                escape(&self.user),
                escape(password)
            ),
            None => String::new(),
        }
    }
}

/// A backup's metadata, as stored beside the dump in `backups/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub app: String,
    pub id: String,
    pub created_at: String,
    pub database: String,
    pub release_before: Option<String>,
    pub release_after: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_split_and_the_password_only_lands_in_pgpass() {
        let db = Database::from_url("DATABASE_URL", "postgres://app:p%3Ass%40w@db.internal:6543/shop?sslmode=disable")
            .unwrap();
        assert_eq!(db.describe(), "db.internal:6543/shop");
        assert_eq!(db.user, "app");
        assert_eq!(db.pgpass(), "db.internal:6543:shop:app:p\\:ss@w\n");
        assert!(!format!("{db:?}").contains("ss@w"));
    }

    #[test]
    fn bad_urls_name_the_variable_not_the_value() {
        let err = Database::from_url("DATABASE_URL", "postgres://u:hunter2@/").unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL") && !err.contains("hunter2"), "{err}");
        let err = Database::from_url("X", "not a url with hunter2").unwrap_err().to_string();
        assert!(!err.contains("hunter2"));
    }
}

/// A WAL position (`pg_lsn`), comparable and subtractable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (hi, lo) = text.trim().split_once('/').ok_or_else(|| format!("`{text}` is not an LSN"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("`{text}` is not an LSN"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("`{text}` is not an LSN"))?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Connects to `url`, but at `via` (a local forward) when given, and runs one query
/// returning one text value.
pub async fn query_text(url: &str, via: Option<std::net::SocketAddr>, sql: &str) -> Result<Option<String>, String> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|_| "the URL does not parse".to_string())?;
    if let Some(addr) = via {
        let mut forwarded = tokio_postgres::Config::new();
        forwarded.host(addr.ip().to_string()).port(addr.port());
        if let Some(user) = config.get_user() {
            forwarded.user(user);
        }
        if let Some(password) = config.get_password() {
            forwarded.password(password);
        }
        if let Some(db) = config.get_dbname() {
            forwarded.dbname(db);
        }
        config = forwarded;
    }
    config.connect_timeout(std::time::Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| crate::error::chain(&e))?;
    let task = tokio::spawn(connection);
    let row = client.query_one(sql, &[]).await.map_err(|e| crate::error::chain(&e));
    drop(client);
    let _ = task.await;
    row?.try_get::<_, Option<String>>(0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod lsn_tests {
    use super::*;

    #[test]
    fn lsns_parse_and_order() {
        let a: Lsn = "0/3000060".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.0 - a.0, (1u64 << 32) - 0x300_0060);
        assert_eq!(a.to_string(), "0/3000060");
        assert!("nope".parse::<Lsn>().is_err());
    }
}
