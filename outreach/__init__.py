"""outreach: find who to contact, send formal notices on an escalation ladder, keep proof."""

__version__ = "0.1.0"
