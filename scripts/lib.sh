# Shared helpers for bootcast's shell scripts: source it, do not run it.
# Callers define log() and die() before sourcing.

# Waits while another apt/dpkg holds its locks (e.g. unattended upgrades).
wait_for_apt_locks() {
    local lock waited=0
    command -v fuser >/dev/null 2>&1 || return 0
    for lock in /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock \
                /var/lib/apt/lists/lock /var/cache/apt/archives/lock; do
        while [[ -e $lock ]] && fuser "$lock" >/dev/null 2>&1; do
            ((waited % 30 == 0)) && log "waiting for the apt/dpkg lock ($lock)"
            ((waited >= 900)) && die "apt/dpkg lock $lock still held after ${waited}s"
            sleep 2
            waited=$((waited + 2))
        done
    done
}

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root to run: $*"
    fi
}

apt_lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_update() {
    wait_for_apt_locks
    log "apt-get update"
    as_root apt-get -o DPkg::Lock::Timeout=600 -qq update >&2
}

ensure_packages() {
    local p missing=()
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == 'install ok installed' ]] ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing Debian packages: ${missing[*]}"
    apt_lists_present || apt_update
    wait_for_apt_locks
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
            install -y -qq --no-install-recommends "${missing[@]}" >&2; then
        apt_update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
            install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# Makes cargo available (rustup's ~/.cargo/bin included) and checks the toolchain is new enough.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
        export PATH=$HOME/.cargo/bin:$PATH
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust 1.89 or newer with rustup (https://rustup.rs), then rerun"
    local v
    v=$(rustc --version | awk '{print $2}')
    [[ $(printf '%s\n1.89.0\n' "$v" | sort -V | head -n 1) == 1.89.0 ]] ||
        die "rustc $v is too old: bootcast needs 1.89 or newer (rustup update)"
}
