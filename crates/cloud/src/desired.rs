//! The desired state the cloud serves to the leader agent.
//!
//! Two ways in, one rule: the operator edits the watched file
//! (`desired_file`), or someone sends `PUT /v1/desired` (`cairn apply`). Either
//! way the text is parsed and validated by [`cairn_control::desired::parse`],
//! and it becomes current only if it is valid and its id is above the current
//! one's. So the current desired state is always the newest valid submission,
//! and an invalid one changes nothing: its refusal is logged and published
//! naming the field, and the previous state goes on being served.
//!
//! The watched file is read every [`DESIRED_POLL_MS`] and compared by
//! contents, not by inode or modification time: editors save by writing a new
//! file and renaming it over the old one, and a rename within the same second
//! keeps the old mtime on some filesystems. A file that vanishes keeps the
//! last state (an editor may be between delete and rename). The current text
//! is persisted in `<root>/desired_state.jsonc`, so a restarted cloud serves
//! it again before anyone touches the file.
//!
//! The text is served as it was written, comments and all: the agents parse
//! it themselves, with the same parser.
//!
//! Not handled: checks against the running cluster (a forbidden change such
//! as `restore_from` on a cluster that ran). The cloud does not know the
//! cluster's history; the leader agent checks those with
//! `cairn_control::desired::check_transition` and reports a refusal in its
//! status.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_control::desired::{check_supported, parse, DesiredError};
use serde::{Deserialize, Serialize};

use crate::status::{Events, StatusEvent};
use crate::{lock, now_ms, Error};
use cairn_util::files::{read_capped, write_atomic};

/// How often the watched file is read.
pub const DESIRED_POLL_MS: u64 = 500;
/// Largest desired-state text accepted, from the file or a request.
pub const DESIRED_TEXT_BYTES_MAX: usize = 1024 * 1024;
/// Where the current desired text is kept under the cloud's root.
pub const DESIRED_STATE_FILE: &str = "desired_state.jsonc";

/// Where a desired state came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredSource {
    /// The watched file.
    File,
    /// `PUT /v1/desired`.
    Apply,
}

impl DesiredSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredSource::File => "file",
            DesiredSource::Apply => "apply",
        }
    }
}

/// `GET /v1/desired`: the current desired state, as its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub id: u64,
    /// The text as submitted (JSON with comments).
    pub text: String,
    pub source: DesiredSource,
}

/// What a valid submission did.
pub(crate) enum Outcome {
    /// It is now the current desired state.
    Accepted(DesiredRecord),
    /// It is the current desired state already, word for word.
    Unchanged(DesiredRecord),
}

impl Outcome {
    pub fn record(self) -> DesiredRecord {
        match self {
            Outcome::Accepted(record) | Outcome::Unchanged(record) => record,
        }
    }
}

struct State {
    current: Option<DesiredRecord>,
    /// The watched file's contents when last acted on, valid or not.
    file_seen: Option<Vec<u8>>,
    /// Why the watched file could not be read, once logged.
    file_problem: Option<String>,
}

/// The current desired state, its file on disk, and the watched file.
pub(crate) struct DesiredStore {
    stored: PathBuf,
    watched: Option<PathBuf>,
    events: Events,
    state: Mutex<State>,
}

impl DesiredStore {
    /// Loads the desired state a previous run kept under `root`.
    pub fn open(
        root: &Path,
        watched: Option<PathBuf>,
        events: Events,
    ) -> Result<DesiredStore, Error> {
        let stored = root.join(DESIRED_STATE_FILE);
        let current = load_stored(&stored, watched.as_deref())?;
        let state = State { current, file_seen: None, file_problem: None };
        Ok(DesiredStore { stored, watched, events, state: Mutex::new(state) })
    }

    pub fn current(&self) -> Option<DesiredRecord> {
        lock(&self.state).current.clone()
    }

    /// Makes `text` current if it is valid and newer; persists it first.
    pub fn submit(&self, text: String, source: DesiredSource) -> Result<Outcome, Error> {
        let desired = parse(&text).map_err(Error::DesiredInvalid)?;
        check_supported(&desired).map_err(Error::DesiredInvalid)?;
        let record = {
            let mut state = lock(&self.state);
            if let Some(current) = &state.current {
                if current.text == text {
                    return Ok(Outcome::Unchanged(current.clone()));
                }
                if desired.id <= current.id {
                    return Err(Error::DesiredStale { id: desired.id, current: current.id });
                }
            }
            write_atomic(&self.stored, text.as_bytes())
                .map_err(|e| Error::io("cannot keep the desired state in", &self.stored, e))?;
            let record = DesiredRecord { id: desired.id, text, source };
            state.current = Some(record.clone());
            record
        };
        let at_ms = now_ms();
        self.events.publish(StatusEvent::DesiredAccepted { at_ms, id: record.id, source });
        Ok(Outcome::Accepted(record))
    }

    /// `PUT /v1/desired`: like [`DesiredStore::submit`], and a refusal is
    /// published too, so `cairn up` shows it.
    pub fn apply(&self, text: String) -> Result<Outcome, Error> {
        self.submit(text, DesiredSource::Apply)
            .inspect_err(|e| self.refused(DesiredSource::Apply, e))
    }

    fn refused(&self, source: DesiredSource, error: &Error) {
        let message = match error {
            Error::DesiredInvalid(e) => e.to_string(),
            other => other.to_string(),
        };
        self.events.publish(StatusEvent::DesiredRefused { at_ms: now_ms(), source, message });
    }

    /// One look at the watched file: submits its contents when they changed.
    pub fn poll_file(&self) {
        let Some(path) = &self.watched else { return };
        let bytes = match read_capped(path, DESIRED_TEXT_BYTES_MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return self.file_problem(path, "it is gone".into()),
            Err(e) => return self.file_problem(path, e.to_string()),
        };
        {
            let mut state = lock(&self.state);
            state.file_problem = None;
            if state.file_seen.as_deref() == Some(&bytes[..]) {
                return;
            }
            state.file_seen = Some(bytes.clone());
        }
        let submitted = match String::from_utf8(bytes) {
            Ok(text) => self.submit(text, DesiredSource::File),
            Err(_) => {
                Err(Error::DesiredInvalid(DesiredError::new("document", "the file is not UTF-8")))
            }
        };
        match submitted {
            Ok(_) => {}
            Err(error @ Error::Io { .. }) => {
                // Not the file's fault: look at the same contents again next time.
                lock(&self.state).file_seen = None;
                tracing::error!(error = %error, "cannot accept the desired state file");
            }
            Err(error) => self.refused(DesiredSource::File, &error),
        }
    }

    /// Logs why the watched file cannot be read, once until it can again.
    fn file_problem(&self, path: &Path, problem: String) {
        let mut state = lock(&self.state);
        if state.file_problem.as_ref() != Some(&problem) {
            tracing::warn!(
                file = %path.display(),
                "cannot read the desired state file ({problem}); the current desired state stays"
            );
            state.file_problem = Some(problem);
        }
    }

    /// Polls the watched file every [`DESIRED_POLL_MS`], until the task is
    /// aborted.
    pub async fn watch(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_millis(DESIRED_POLL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.poll_file();
        }
    }
}

/// The desired state kept by a previous run, if any is still valid. Its
/// source is the file when the watched file holds the same text.
fn load_stored(stored: &Path, watched: Option<&Path>) -> Result<Option<DesiredRecord>, Error> {
    let read = |path: &Path| read_capped(path, DESIRED_TEXT_BYTES_MAX);
    let Some(bytes) = read(stored).map_err(|e| Error::io("cannot read", stored, e))? else {
        return Ok(None);
    };
    let Ok(text) = String::from_utf8(bytes) else {
        tracing::warn!(file = %stored.display(), "the kept desired state is not UTF-8; ignoring it");
        return Ok(None);
    };
    let desired = match parse(&text) {
        Ok(desired) => desired,
        Err(e) => {
            // Valid when accepted: a newer build must be stricter. Serving
            // it would hand agents a state they refuse.
            tracing::warn!(file = %stored.display(), error = %e, "the kept desired state is no longer valid; ignoring it");
            return Ok(None);
        }
    };
    let same_as_file =
        watched.and_then(|w| read(w).ok().flatten()).is_some_and(|b| b == text.as_bytes());
    let source = if same_as_file { DesiredSource::File } else { DesiredSource::Apply };
    Ok(Some(DesiredRecord { id: desired.id, text, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(id: u64) -> String {
        format!(
            r#"{{"id":{id},"running":true,"version":"0.1.0","artifacts":null,"restart_generation":0,"replicas":3,"zones":["zone-a"],"host_type":"small","allow_temporary_hosts":false,"backups":[],"backup_schedule":null,"restore_from":null,"max_attempts":5}}"#
        )
    }

    /// Newer ids are accepted, the same text again is unchanged, a lower or
    /// equal id with other text is stale, and the state survives a reopen.
    #[test]
    fn submissions_and_reopen() {
        let root = tempfile::tempdir().expect("temp dir");
        let store = DesiredStore::open(root.path(), None, Events::new()).expect("open");
        assert!(store.current().is_none());
        assert!(matches!(store.submit(text(2), DesiredSource::Apply), Ok(Outcome::Accepted(_))));
        assert!(matches!(store.submit(text(2), DesiredSource::File), Ok(Outcome::Unchanged(_))));
        let stale = store.submit(text(1), DesiredSource::Apply);
        assert!(matches!(stale, Err(Error::DesiredStale { id: 1, current: 2 })));
        let invalid = store.submit("{".into(), DesiredSource::Apply);
        assert!(matches!(invalid, Err(Error::DesiredInvalid(_))));
        let reopened = DesiredStore::open(root.path(), None, Events::new()).expect("reopen");
        let current = reopened.current().expect("kept");
        assert_eq!((current.id, current.source), (2, DesiredSource::Apply));
    }
}
