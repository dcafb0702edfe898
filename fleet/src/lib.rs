//! Fleet client (fan-out queries across ingero agents).
