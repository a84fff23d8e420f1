//! vfio-user protocol: messages, server and client.
#![deny(missing_docs)]
