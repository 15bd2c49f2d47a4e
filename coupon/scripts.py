"""The Lua scripts, one file each in scripts/, registered once per Redis client.

redis-py's Script runs EVALSHA and loads the script again after NOSCRIPT (a restarted Redis).
"""
from pathlib import Path

SCRIPT_DIR = Path(__file__).parent / "scripts"
NAMES = ("claim", "lease", "renew", "give_back", "leader", "resign")


class Scripts:
    def __init__(self, redis):
        for name in NAMES:
            setattr(self, name, redis.register_script((SCRIPT_DIR / f"{name}.lua").read_text()))
