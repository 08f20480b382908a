def resolve_pretrained(name_or_path: str) -> str: return name_or_path
