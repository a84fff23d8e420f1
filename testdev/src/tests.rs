//! Unit tests of the device against its register map.
