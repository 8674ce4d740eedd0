//! Secrets made here: random tokens from the kernel's generator, kept in
//! files readable by their owner only.

use std::io::{self, Read};
use std::path::Path;

/// Random bytes in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;
/// Most bytes of a token file read.
const TOKEN_FILE_BYTES_MAX: usize = 4096;

/// A new random token: [`TOKEN_BYTES`] bytes from `/dev/urandom`, as hex.
pub fn generate() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token in `path` (surrounding whitespace dropped); `None` when there is
/// no such file.
pub fn read(path: &Path) -> io::Result<Option<String>> {
    let Some(bytes) = crate::files::read_capped(path, TOKEN_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the token is not text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the token file is empty"));
    }
    Ok(Some(token.to_string()))
}

/// The token in `path`, made (readable by its owner only) when missing.
/// Processes that make it at once (nodes started together on one shared
/// file) all end with the one that landed first: a new token is written
/// aside and linked into place, which fails if another got there.
pub fn load_or_create(path: &Path) -> io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(token) = read(path)? {
        return Ok(token);
    }
    let token = generate()?;
    let mut aside = path.file_name().unwrap_or_default().to_os_string();
    aside.push(format!(".{}.{}.tmp", std::process::id(), &token[..8]));
    let aside = path.with_file_name(aside);
    {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&aside)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&aside, path);
    std::fs::remove_file(&aside)?;
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the token file vanished")),
        Err(e) => Err(e),
    }
}

/// A secret held in memory: its `Debug` never shows it, so settings that
/// hold one can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_making_one_token_at_once_agree_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let made: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> =
                (0..8).map(|_| scope.spawn(|| load_or_create(&path).unwrap())).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(made.iter().all(|token| *token == made[0]), "{made:?}");
        assert_eq!(read(&path).unwrap().as_deref(), Some(made[0].as_str()));
    }

    #[test]
    fn a_token_is_made_once_kept_private_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(token.len(), TOKEN_BYTES * 2);
        assert_eq!(load_or_create(&path).unwrap(), token, "kept, not remade");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert_ne!(generate().unwrap(), token);
        assert!(same(&token, &token.clone()));
        assert!(!same(&token, &token[1..]));
        assert!(!same("abc", "abd"));
        assert_eq!(read(&dir.path().join("none")).unwrap(), None);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "nothing left aside: {names:?}");
        assert_eq!(format!("{:?}", Secret::new(token.clone())), "Secret(..)");
    }
}
