"""Shipped format files (package data): neo-crm.yaml, pgaudit.yaml, cloudtrail.yaml.

Loaded by name through auditd.decode.formats.load_format; operators extend them in
their own files rather than editing these.
"""
