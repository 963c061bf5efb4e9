# One closure: python3 (the interpreter envs are built against and run with), uv (resolves
# and installs envs) and ruff (formats and lints programs). `bin/` links all three.
{ pkgs }:
pkgs.buildEnv {
  name = "kakoi-toolchain";
  paths = [
    pkgs.python3
    pkgs.uv
    pkgs.ruff
  ];
  pathsToLink = [ "/bin" ];
}
