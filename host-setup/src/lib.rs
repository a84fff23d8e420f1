//! Host setup for VFIO passthrough: doctor, bind, unbind, reset.
#![deny(missing_docs)]
