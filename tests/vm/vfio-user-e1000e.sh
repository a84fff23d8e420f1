#!/usr/bin/env bash
# The e1000e round trip of vfio-user-roundtrip.sh (see there for the environment).
exec "$(dirname "${BASH_SOURCE[0]}")/vfio-user-roundtrip.sh" e1000e "$@"
