//! The desired state (placeholder, filled in next).
