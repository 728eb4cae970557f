"""Writes the redis.conf of a rendered manifest into SCRATCH, adapted to a test run: data in
SCRATCH, a unix socket instead of TCP port 6379.

    python redis_conf.py RENDERED.yaml SCRATCH
"""

import sys

import yaml

rendered, scratch = sys.argv[1], sys.argv[2]
for d in yaml.safe_load_all(open(rendered)):
    if d and d["kind"] == "ConfigMap" and "redis.conf" in d.get("data", {}):
        conf = d["data"]["redis.conf"]
        for old, new in (("dir /data", f"dir {scratch}"),
                         ("port 6379", f"port 0\nunixsocket {scratch}/redis.sock")):
            if old not in conf:
                sys.exit(f"redis.conf has no `{old}` line")
            conf = conf.replace(old, new)
        open(f"{scratch}/redis.conf", "w").write(conf)
        break
else:
    sys.exit(f"no ConfigMap with redis.conf in {rendered}")
