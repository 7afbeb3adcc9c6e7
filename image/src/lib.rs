//! berth image store (being written).
