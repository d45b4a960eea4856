//! Trigger role: arrives with the trigger issue. Kept as a crate so the layout is stable.
