# Shared by tests/run and packaging/serve (sourced, not executed).
# Expects CARGO_TARGET_DIR to be set by the caller.

# Debian packages the appliance needs at run time, as "command package" pairs:
# the package is installed when the command is missing.
APPLIANCE_TOOLS=(
    "cc gcc" "cc libc6-dev"                                      # linking Rust binaries
    "pkg-config pkg-config" "/usr/include/openssl/ssl.h libssl-dev"   # git2 (https, ssh)
    "git git"                                                    # template sources
    "ip iproute2" "nft nftables"                                 # per-sandbox networking
    "qemu-system-x86_64 qemu-system-x86" "qemu-img qemu-utils"   # the VMs
    "mmdebstrap mmdebstrap" "mkfs.ext4 e2fsprogs"                # the guest image
)

# The packages of the given "command package" pairs whose command is missing
# (a "command" starting with / is a file that must exist), one per line.
missing_packages() {
    local pair
    for pair in "$@"; do
        set -- $pair
        case "$1" in
            /*) [ -e "$1" ] || echo "$2" ;;
            *) command -v "$1" >/dev/null || echo "$2" ;;
        esac
    done
    # The SDK suites and benchmarks run in venvs.
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || echo python3-venv
}

# Installs what missing_packages names; apt-get update runs once, and only
# when something is missing. Checks again afterwards: apt may remove a
# package to install another (a newer qemu-utils from backports goes when
# bookworm's qemu-system-x86 comes in), so a second round installs what the
# first one took away, and a third finding means a clear failure.
install_tools() {
    local missing round
    for round in 1 2 3; do
        # shellcheck disable=SC2207 # package names have no spaces
        missing=($(missing_packages "$@" | sort -u))
        if [ "${#missing[@]}" -eq 0 ]; then
            [ "$round" -eq 1 ] && echo "all present"
            return 0
        fi
        if [ "$round" -eq 3 ]; then
            echo "still missing after installing: ${missing[*]}" >&2
            return 1
        fi
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        [ "$round" -eq 1 ] && apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
    done
}

# envd is built statically (glibc +crt-static) so it runs as init in any
# rootfs; --target keeps the static flag off build scripts.
ENVD_TARGET=x86_64-unknown-linux-gnu
ENVD_BIN="$CARGO_TARGET_DIR/$ENVD_TARGET/release/envd"
build_envd() {
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -p envd --release --target "$ENVD_TARGET"
}
