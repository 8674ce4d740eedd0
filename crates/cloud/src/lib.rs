//! Cairn's cloud (placeholder, filled in next).
