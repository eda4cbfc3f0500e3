from tests.integration.conftest import landing_form
from landing.tables import Lead
import traceback

async def test_probe(client, catalog):
    token = await landing_form(client, "seo")
    cases = {
        "raw_latin1_body_token": ("_csrf_token=%s&email=a%%40b.com&first_name=" % token).encode() + "é".encode("latin-1") + b"&consent=on",
        "raw_utf8_body_token": ("_csrf_token=%s&email=c%%40b.com&first_name=" % token).encode() + "é".encode("utf-8") + b"&consent=on",
    }
    for name, body in cases.items():
        for hdr in (False, True):
            headers = {"content-type": "application/x-www-form-urlencoded"}
            if hdr:
                headers["x-lk-csrf"] = token
            r = await client.post("/l/seo", content=body, headers=headers)
            print(name, hdr, r.status_code, r.headers, r.text[:300].replace("\n", " "))
    print(await Lead.select(Lead.email, Lead.first_name))
