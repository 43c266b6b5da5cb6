//! collector-sim
