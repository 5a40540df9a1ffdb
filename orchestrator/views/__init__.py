"""What a person reads: plots, contact sheets, quality against cost, the report page."""
