//! One module per command, each a short checklist: resolve what it needs, observe or
//! run the engine (`deploy::Engine`), hand data to the reporter. Commands never call
//! each other: what two of them share lives in the layers below (the engine, the host
//! operations, the views) or here.

pub mod backups;
pub mod build;
pub mod config;
pub mod deploy;
pub mod destroy;
pub mod doctor;
pub mod exec;
pub mod init;
pub mod inspect;
pub mod launch;
pub mod lock;
pub mod maintenance;
pub mod pg;
pub mod regions;
pub mod secrets;
pub mod volumes;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{edit, Config};
use crate::deploy::Engine;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::report::views::View;
use crate::report::{Event, Reporter};
use crate::settings::{Overrides, Settings};
use crate::transport::SshOptions;

/// What every command gets: the resolved settings, the config they came from (for
/// commands that edit it), and where to report.
pub struct Ctx {
    pub settings: Settings,
    pub config: Arc<Config>,
    pub config_path: PathBuf,
    pub reporter: Arc<dyn Reporter>,
    /// Whether the user can be asked to confirm (stdin is a terminal).
    pub interactive: bool,
    ssh: SshOptions,
    overrides: Overrides,
    /// Every fleet handed out (shared with [`Ctx::with_config`]), so that the port
    /// forwards their connections opened are closed at the end ([`Ctx::close`]).
    fleets: Arc<Mutex<Vec<Fleet>>>,
}

impl Ctx {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        reporter: Arc<dyn Reporter>,
        ssh: SshOptions,
        overrides: Overrides,
    ) -> Self {
        let settings = Settings::resolve(&config, ssh.clone(), &overrides);
        Self {
            settings,
            config: Arc::new(config),
            config_path,
            reporter,
            interactive: std::io::IsTerminal::is_terminal(&std::io::stdin()),
            ssh,
            overrides,
            fleets: Arc::default(),
        }
    }

    /// The same invocation against an edited config.
    #[must_use]
    pub fn with_config(&self, config: Config) -> Ctx {
        Ctx {
            settings: Settings::resolve(&config, self.ssh.clone(), &self.overrides),
            config: Arc::new(config),
            config_path: self.config_path.clone(),
            reporter: Arc::clone(&self.reporter),
            interactive: self.interactive,
            ssh: self.ssh.clone(),
            overrides: self.overrides.clone(),
            fleets: Arc::clone(&self.fleets),
        }
    }

    #[allow(clippy::needless_pass_by_value)] // events are built inline at each call
    pub fn event(&self, event: Event) {
        self.reporter.event(&event);
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.event(Event::Warning { message: message.into() });
    }

    /// Shows what a read command found.
    pub fn show(&self, view: &impl View) {
        let json = serde_json::to_value(view).unwrap_or_default();
        self.reporter.show(&json, &view.render());
    }

    pub fn fleet(&self) -> Result<Fleet, Error> {
        let fleet = Fleet::from_config(&self.config, &self.settings.ssh)?;
        if let Ok(mut fleets) = self.fleets.lock() {
            fleets.push(fleet.clone());
        }
        Ok(fleet)
    }

    /// Closes what the command's connections opened (port forwards through SSH
    /// masters kept for later runs).
    pub async fn close(&self) {
        let fleets: Vec<Fleet> = self.fleets.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default();
        for fleet in fleets {
            fleet.close().await;
        }
    }

    pub fn engine<'a>(&'a self, fleet: &'a Fleet) -> Engine<'a> {
        Engine::new(&self.settings, fleet, Arc::clone(&self.reporter))
    }

    /// A finished operation that needed no rollout.
    pub fn finished(&self, message: impl Into<String>) {
        self.event(Event::Finished {
            outcome: crate::report::Outcome::Succeeded,
            version: None,
            previous: None,
            message: message.into(),
            duration_ms: 0,
        });
    }

    /// Asks the user to confirm on the terminal; without one, refuses and names `--yes`.
    pub fn confirm(&self, question: &str) -> Result<(), Error> {
        if !self.interactive {
            return Err(Error::Usage {
                message: format!("{question} (confirmation needed, and stdin is not a terminal)"),
                hint: Some("run it again with `--yes`".into()),
            });
        }
        eprint!("{question} [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(Error::usage("cancelled; nothing was changed"))
        }
    }

    /// Asks before a restore replaces a database's contents.
    pub fn confirm_restore(
        &self,
        db: &crate::postgres::Database,
        backup: &crate::postgres::Backup,
    ) -> Result<(), Error> {
        let (db, id, at) = (db.describe(), &backup.id, &backup.created_at);
        self.confirm(&format!("replace the contents of `{db}` with backup {id} from {at}?"))
    }

    /// The edited fly.toml text and the invocation it would give, without writing
    /// anything: an edit is checked by loading it before it is kept.
    pub fn preview_edit(
        &self,
        f: impl FnOnce(&str) -> Result<String, edit::EditError>,
    ) -> Result<(String, Ctx), Error> {
        let text = std::fs::read_to_string(&self.config_path).map_err(|source| Error::Io {
            action: "read",
            path: self.config_path.display().to_string(),
            source,
        })?;
        let edited = f(&text).map_err(|e| Error::Failed { message: e.to_string(), hint: None })?;
        let loaded = crate::config::parse(&self.config_path, &edited)?;
        Ok((edited, self.with_config(loaded.config)))
    }

    /// Writes an edited fly.toml (comments and formatting kept by the edit).
    pub fn write_config(&self, text: String) -> Result<(), Error> {
        edit::edit_file(&self.config_path, move |_| Ok(text))
            .map_err(|e| Error::Failed { message: e.to_string(), hint: None })
    }
}
