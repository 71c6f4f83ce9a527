"""The scrape stage: CNCF landscape -> selected projects -> their docs files (GitHub, a local mirror, websites)."""
