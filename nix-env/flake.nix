# kakoi's toolchain as a flake: one closure holding python3, uv and ruff.
#
# kakoi realises it with
#   nix build --print-out-paths --out-link <data>/toolchain/nix-result path:<dir>#default
# and binds only that closure (`nix-store --query --requisites`) read-only into sandboxes.
#
# nixpkgs is pinned to one revision of the nixos-25.05 channel (flake.lock holds its
# narHash). To move the pin: edit the revision below, then run `nix flake lock` in this
# directory to regenerate flake.lock, and commit both.
{
  description = "kakoi toolchain: python3, uv and ruff in one closure";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/b2a3852bd078e68dd2b3dfa8c00c67af1f0a7d20";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = import ./toolchain.nix { inherit pkgs; };
      });
    };
}
