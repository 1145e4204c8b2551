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

# Installs the packages of the given "command package" pairs whose command is
# missing (a "command" starting with / is a file that must exist); apt-get
# update runs once, and only when something is missing.
install_tools() {
    local missing=() pair
    for pair in "$@"; do
        set -- $pair
        case "$1" in
            /*) [ -e "$1" ] || missing+=("$2") ;;
            *) command -v "$1" >/dev/null || missing+=("$2") ;;
        esac
    done
    # The SDK suites and benchmarks run in venvs.
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
    # shellcheck disable=SC2207 # package names have no spaces
    missing=($(printf '%s\n' ${missing[@]+"${missing[@]}"} | sort -u))
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "all present"
        return 0
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# envd is built statically (glibc +crt-static) so it runs as init in any
# rootfs; --target keeps the static flag off build scripts.
ENVD_TARGET=x86_64-unknown-linux-gnu
ENVD_BIN="$CARGO_TARGET_DIR/$ENVD_TARGET/release/envd"
build_envd() {
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -p envd --release --target "$ENVD_TARGET"
}
