#!/usr/bin/env node
/** The excp command's entry point (package.json bin). */
import { run } from './cli/main.js';

run(process.argv.slice(2));
