//! Cairn's host agent (placeholder, filled in next).
