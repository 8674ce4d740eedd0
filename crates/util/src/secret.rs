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
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
pub fn load_or_create(path: &Path) -> io::Result<String> {
    if let Some(token) = read(path)? {
        return Ok(token);
    }
    let token = generate()?;
    crate::files::write_atomic_private(path, format!("{token}\n").as_bytes())?;
    Ok(token)
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
    }
}
