#!/usr/bin/env bash
# Install a Java runtime from Debian's openjdk-17-jre-headless, only when `java` is missing, so it is cheap to
# call before every test run. Spark (the `spark` extra, pyspark 4) runs on Java 17 or 21;
# tests/service/test_spark.py scores on local[2]. Needs root for the install.
set -euo pipefail

if command -v java > /dev/null; then
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "java_setup: java is missing, and installing it needs root" >&2
  exit 1
fi
if ! command -v apt-get > /dev/null; then
  echo "java_setup: java is missing, and there is no apt-get to install it" >&2
  exit 1
fi
apt-get update -qq
echo "java_setup: apt-get install openjdk-17-jre-headless (for Spark)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless > /dev/null
command -v java > /dev/null
