#!/usr/bin/env bash
# The small-preset part of trainer-7b.sh (tinyllama export checked by transformers, snapshot + exact resume), as its own stage.
PARTS=small exec bash "$(dirname "$0")/trainer-7b.sh"
