# The same toolchain for Nix without flakes: `nix-build nix-env/default.nix`.
#
# nixpkgs comes from the revision and narHash pinned in flake.lock, so both entry points
# build the identical closure.
let
  lock = builtins.fromJSON (builtins.readFile ./flake.lock);
  locked = lock.nodes.nixpkgs.locked;
  nixpkgsSrc = fetchTarball {
    url = "https://github.com/${locked.owner}/${locked.repo}/archive/${locked.rev}.tar.gz";
    sha256 = locked.narHash;
  };
in
{
  pkgs ? import nixpkgsSrc { },
}:
import ./toolchain.nix { inherit pkgs; }
