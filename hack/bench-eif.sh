#!/usr/bin/env bash
# Placeholder until its issue lands.
set -euo pipefail
echo "bench-eif: not yet"
