#!/usr/bin/env bash
# The libvfio-user gpio-pci-idio-16 round trip of vfio-user-roundtrip.sh (see there).
exec "$(dirname "${BASH_SOURCE[0]}")/vfio-user-roundtrip.sh" gpio "$@"
