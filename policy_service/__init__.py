"""Policy service: mirroring policies, the rule language and tag templates."""
