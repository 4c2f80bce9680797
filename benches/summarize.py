#!/usr/bin/env python3
"""Prints median time and median throughput of every criterion benchmark under target/criterion.

Usage: python3 benches/summarize.py [GROUP_PREFIX]
"""
import glob
import json
import os
import sys

prefix = sys.argv[1] if len(sys.argv) > 1 else ""
for bench in sorted(glob.glob("target/criterion/**/new/benchmark.json", recursive=True)):
    meta = json.load(open(bench))
    if not meta["full_id"].startswith(prefix):
        continue
    estimates = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
    median_ns = estimates["median"]["point_estimate"]
    line = f"{meta['full_id']:<45} median {median_ns / 1000:>10.1f} µs"
    throughput = meta.get("throughput") or {}
    if "Bytes" in throughput:
        line += f"  {throughput['Bytes'] / median_ns * 1e9 / 1e6:>9.0f} MB/s"
    elif "Elements" in throughput:
        line += f"  {throughput['Elements'] / median_ns * 1e9:>12.0f} elem/s"
    print(line)
