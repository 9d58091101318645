#!/usr/bin/env node
/** The excp command's entry point (package.json bin): runs lib/cli/main.ts. */
import './cli/main.js';
