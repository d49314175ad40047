#!/usr/bin/env bash
# Make sure a Keycloak server distribution is unpacked in the cache, for the tests and the demo
# (libs/kit/testing/keycloak.py runs `kc.sh start-dev` from it, with its own data dir, on a free port).
# The distribution is the `org.keycloak:keycloak-quarkus-dist` zip from Maven Central, fetched by Maven into the
# local repository (~/.m2) and unpacked once into ${MAILLAGE_CACHE:-$HOME/.cache/maillage}/keycloak-<version>.
# Idempotent: when the distribution is there it changes nothing. Stdout is always one line, the path of kc.sh;
# progress and errors go to stderr.
#
# Environment: KEYCLOAK_VERSION (default below), MAILLAGE_CACHE, MAVEN_REPO_LOCAL (default ~/.m2/repository).
set -euo pipefail

# Keycloak >= 26.7 is required: its "Organization Group Membership" mapper puts the roles of organisation groups in
# the token, per organisation (addGroupRoleMappings); see docs/KEYCLOAK.md.
readonly DEFAULT_VERSION=26.7.3
version=${KEYCLOAK_VERSION:-$DEFAULT_VERSION}
cache=${MAILLAGE_CACHE:-$HOME/.cache/maillage}
dest=$cache/keycloak-$version
kc_sh=$dest/bin/kc.sh
# Written last: a directory without it is a half-finished unpack and is redone.
marker=$dest/.maillage-unpacked

say() { echo "ensure-keycloak: $*" >&2; }

if [[ ! $version =~ ^[0-9]+(\.[0-9]+)*$ ]]; then
    say "invalid KEYCLOAK_VERSION '$version' (expected e.g. $DEFAULT_VERSION)"
    exit 1
fi

if [[ -f $marker && -x $kc_sh ]]; then
    echo "$kc_sh"
    exit 0
fi

install_packages() {
    # $1: what is missing, $2...: Debian packages that bring it.
    local what=$1
    shift
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        say "$what is not installed."
        say "  On Debian/Ubuntu:  sudo apt-get install $*"
        exit 1
    fi
    say "installing $* from Debian's packages..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Keycloak 26 runs on Java 17, 21 or 25; Maven downloads the distribution.
if ! command -v java >/dev/null 2>&1; then
    install_packages "Java (17 or newer)" openjdk-17-jre-headless
fi
if ! command -v mvn >/dev/null 2>&1; then
    install_packages "Maven (mvn)" maven
fi
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p')
if [[ -z $java_major || $java_major -lt 17 ]]; then
    say "Keycloak $version needs Java 17 or newer; \`java\` is version '${java_major:-unknown}' ($(command -v java))"
    exit 1
fi

# Two first runs at once (parallel test sessions) must not unpack over each other: the second waits for the first.
mkdir -p "$cache"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/.keycloak-$version.lock"
    flock 9
    if [[ -f $marker && -x $kc_sh ]]; then
        echo "$kc_sh"
        exit 0
    fi
fi

repo=${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}
artifact=org.keycloak:keycloak-quarkus-dist:$version:zip
zip=$repo/org/keycloak/keycloak-quarkus-dist/$version/keycloak-quarkus-dist-$version.zip

if [[ ! -f $zip ]]; then
    say "downloading $artifact with Maven (about 170 MB)..."
    log=$(mktemp)
    # -Dtransitive=false: only the zip, which is self-contained. Resolving its dependencies as well would download
    # hundreds of jars again, and fails for 26.7.x, whose POM names artifacts that are not on Maven Central.
    if ! mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$repo" dependency:get -Dtransitive=false -Dartifact="$artifact" >"$log" 2>&1; then
        say "mvn dependency:get -Dartifact=$artifact failed:"
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    if [[ ! -f $zip ]]; then
        say "mvn reported success but $zip is missing (is MAVEN_REPO_LOCAL the repository Maven uses?)"
        exit 1
    fi
fi

# Maven checks the download against Central's checksum; check again, so a truncated file left by an interrupted
# run is not unpacked.
if [[ -f $zip.sha1 ]] && command -v sha1sum >/dev/null 2>&1; then
    expected=$(head -c 40 "$zip.sha1")
    actual=$(sha1sum "$zip" | head -c 40)
    if [[ $expected != "$actual" ]]; then
        say "$zip is corrupt (sha1 $actual, expected $expected); delete it and run again"
        exit 1
    fi
fi

say "unpacking Keycloak $version into $dest..."
tmp=$(mktemp -d "$cache/.keycloak-$version.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$zip" -d "$tmp"
else
    python3 -m zipfile -e "$zip" "$tmp"
fi
unpacked=$tmp/keycloak-$version
if [[ ! -f $unpacked/bin/kc.sh ]]; then
    say "$zip does not contain keycloak-$version/bin/kc.sh"
    exit 1
fi
# Python's zipfile does not restore the executable bits.
chmod +x "$unpacked"/bin/*.sh

# A $dest without the marker is left by an interrupted run (or someone's hand): replace it.
rm -rf "$dest"
mv -T "$unpacked" "$dest"

# Warm-up: the first `kc.sh start-dev` of a distribution re-augments it for the dev profile (about 20 s on 2 cores),
# writing into $dest/lib/quarkus. Do it here, once and under the lock, so that test runs never augment, and two of
# them never augment the same tree at once. kc.launch.mode=exit_before_bootstrap makes Keycloak stop right after it
# has started (on a random port, with a throwaway home, so no data is left in $dest). KC_* variables of the caller
# are dropped: they could persist other build options (database, features) than the harness's start-dev uses.
say "building Keycloak $version for start-dev (once, about 30 s)..."
home=$(mktemp -d "$cache/.keycloak-$version-warmup.XXXXXX")
trap 'rm -rf "$tmp" "$home"' EXIT
for dir in conf lib providers themes; do
    ln -s "$dest/$dir" "$home/$dir"
done
unset_kc=()
while IFS= read -r name; do
    unset_kc+=(-u "$name")
done < <(env | sed -n 's/^\(KC_[A-Za-z0-9_]*\)=.*/\1/p')
if ! env "${unset_kc[@]}" JAVA_OPTS_KC_HEAP="-Xms64m -Xmx768m" \
    timeout 600 "$kc_sh" "-Dkc.home.dir=$home" -Dkc.launch.mode=exit_before_bootstrap \
    start-dev --http-host=127.0.0.1 --http-port=0 >"$home/warmup.log" 2>&1; then
    say "the warm-up run of $kc_sh start-dev failed:"
    tail -n 40 "$home/warmup.log" >&2
    exit 1
fi
touch "$marker"
say "Keycloak $version ready"
echo "$kc_sh"
