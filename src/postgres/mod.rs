//! PostgreSQL as ferry sees it: a database named by a connection URL (parsed by
//! tokio-postgres, never by hand), described without its password. Dumps run on a
//! host through `host::backup_*`; the password reaches `pg_dump` only through a 0600
//! pgpass file, never an argument or an output line.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a dump connects, password kept apart.
#[derive(Clone)]
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
