//! Worker role: arrives with the worker issue (#3). Kept as a crate so the layout is stable.
