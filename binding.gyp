{
  "targets": [
    {
      "target_name": "spawn",
      "sources": ["src/cgi/native/spawn.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
